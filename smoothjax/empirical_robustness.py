"""Attacked PREDICT for ``certify.py``: the attack settings of ``config.certify`` and the jittable attacker.

``certify.py`` in predict mode with ``certify.attack`` set attacks every image first (SmoothAdv's ``predict.py``:
``attacker`` builds the attack from ``config.certify``), then runs PREDICT on the adversarial image and writes
``predict_<attack name>_sigma_<sigma>.tsv`` (``smoothjax.analysis.attack_name``). ``python -m smoothjax.analysis``
reads those logs back and reports the empirical robust accuracy per radius next to the certified accuracy.
"""

from __future__ import annotations

from typing import Callable

import jax

from smoothjax.smoothadv import attacks
from smoothjax.analysis.logs import attack_name

ATTACKS = ("none", "pgd", "ddn")
_ATTACK_STREAM = 0x5AD  # fold_in constant: the attack's randomness, independent of PREDICT's draws


def validate(cc) -> None:
    """One-line ValueError naming the first bad attack setting of ``config.certify`` (``attack``, ``epsilon``,
    ``num_steps``, ``num_noise_vec``, ``no_grad_attack``, ``base_attack``); nothing to check for ``attack='none'``."""
    attack = cc.get("attack", "none")
    if attack not in ATTACKS:
        raise ValueError(f"certify.attack={attack!r} is not allowed; choose one of: {', '.join(ATTACKS)}")
    if attack == "none":
        return
    if cc.mode != "predict":
        raise ValueError(f"certify.attack={attack!r} is not allowed with certify.mode={cc.mode!r}; attacks run in "
                         "predict mode (the certificate of an attacked image certifies nothing new)")
    eps = cc.get("epsilon", 0.0)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < float("inf"):
        raise ValueError(f"certify.epsilon={eps!r} is not allowed; it must be a finite number >= 0 (pixel L2 units)")
    for name in ("num_steps", "num_noise_vec"):
        value = cc.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"certify.{name}={value!r} is not allowed; it must be an integer >= 1")
    if cc.get("no_grad_attack", False) and (attack != "pgd" or cc.num_noise_vec < 2 or cc.get("base_attack")):
        raise ValueError("certify.no_grad_attack=True is not allowed here; it needs attack='pgd', num_noise_vec >= 2 "
                         "and base_attack=False")


def log_variants(cc) -> tuple:
    """The attack's part of the log name (``certify_loop.log_path`` variants): ``()`` without an attack."""
    name = attack_name(cc.get("attack", "none"), cc.get("epsilon", 0.0), cc.get("num_steps", 1),
                       cc.get("num_noise_vec", 1), cc.get("no_grad_attack", False), cc.get("base_attack", False))
    return (name,) if name else ()


def settings(cc) -> dict:
    """The attack settings that change the rows (for the log's sidecar); ``{}`` without an attack, so logs made
    before attacks existed continue unchanged."""
    if cc.get("attack", "none") == "none":
        return {}
    return {k: cc[k] for k in ("attack", "epsilon", "num_steps", "num_noise_vec", "no_grad_attack", "base_attack")}


def attacker(cc, apply_fn: Callable, sigma: float) -> Callable | None:
    """``attack(keys, variables, x, y) -> x_adv`` for ``config.certify`` (None for ``attack='none'``), jittable.

    Image b is attacked alone (vmapped over the batch) with key ``fold_in(keys[b], 0x5AD)``: m = ``num_noise_vec``
    draws of N(0, sigma^2 I) (none with ``base_attack``: the base classifier), then ``smooth_pgd_l2`` (optionally
    ``no_grad``) or ``smooth_ddn`` with the reference ``predict.py`` settings (initial norm 1.0,
    ``gamma = ddn_gamma_for_prediction(epsilon, T)``). So each row depends only on its image and key, not on
    batching or devices. x (B, H, W, C), y (B,) int; x_adv within ``epsilon`` (L2, pixel units) and in [0, 1].
    """
    validate(cc)
    if cc.get("attack", "none") == "none":
        return None
    eps, steps, m = float(cc.epsilon), int(cc.num_steps), int(cc.num_noise_vec)
    base, no_grad = bool(cc.get("base_attack", False)), bool(cc.get("no_grad_attack", False))
    gamma = attacks.ddn_gamma_for_prediction(eps, steps) if eps > 0 else 0.05

    def one(variables, key, x, y):
        noise_key, direction_key = jax.random.split(jax.random.fold_in(key, _ATTACK_STREAM))
        noise = None if base else sigma * jax.random.normal(noise_key, (m, 1) + x.shape, x.dtype)
        if cc.attack == "pgd":
            x_adv = attacks.smooth_pgd_l2(apply_fn, variables, x[None], y[None], noise, epsilon=eps, num_steps=steps,
                                          no_grad=no_grad, key=direction_key)
        else:
            x_adv = attacks.smooth_ddn(apply_fn, variables, x[None], y[None], noise, epsilon=eps, num_steps=steps,
                                       gamma=gamma, init_norm=1.0, key=direction_key)
        return x_adv[0]

    def attack(keys, variables, x, y):
        return jax.vmap(one, in_axes=(None, 0, 0, 0))(variables, keys, x, y)

    return attack
