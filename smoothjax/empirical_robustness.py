"""Empirical robustness of smoothed classifiers: the names and the summary of attacked PREDICT logs.

``certify.py`` in predict mode with ``certify.attack`` set attacks every image first (SmoothAdv's ``predict.py``:
``attacker`` builds the attack from ``config.certify``) and writes ``predict_<attack name>_sigma_<sigma>.tsv``;
``attack_name`` builds that name and ``parse_attack`` reads it back. The empirical robust accuracy at radius
epsilon is the fraction of images that the smoothed classifier (PREDICT, abstentions wrong) still classifies
correctly after the attack of budget epsilon: an *upper* bound on the true robust accuracy, only as tight as the
attack is strong, reported next to the certified accuracy (a lower bound, up to alpha).

Command line::

    python -m smoothjax.empirical_robustness ATTACK_LOG [ATTACK_LOG ...] [--certified CERTIFY_LOG]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from smoothjax import analysis, attacks

ATTACKS = ("none", "pgd", "ddn")
_NAME = re.compile(r"(?:^|_)(pgd|ddn)_eps_([0-9.]+(?:e-?[0-9]+)?)_steps_(\d+)_m_(\d+)(_nograd)?(_base)?(?=_sigma_|$)")
_ATTACK_STREAM = 0x5AD  # fold_in constant: the attack's randomness, independent of PREDICT's draws


def attack_name(attack: str, epsilon: float, num_steps: int, num_noise_vec: int, no_grad: bool = False,
                base_attack: bool = False) -> str:
    """``<attack>_eps_<epsilon>_steps_<T>_m_<m>[_nograd][_base]`` (epsilon in pixel L2 units, ``repr`` of the float),
    or ``""`` for ``attack='none'``."""
    if attack == "none":
        return ""
    return (f"{attack}_eps_{float(epsilon)!r}_steps_{int(num_steps)}_m_{int(num_noise_vec)}"
            + ("_nograd" if no_grad else "") + ("_base" if base_attack else ""))


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


def parse_attack(path) -> dict | None:
    """The attack settings encoded in a log's file name (``attack``, ``epsilon``, ``num_steps``, ``num_noise_vec``,
    ``no_grad``, ``base_attack``), or None when the name carries no attack."""
    match = _NAME.search(Path(str(path)).stem)
    if match is None:
        return None
    attack, eps, steps, m, no_grad, base = match.groups()
    return {"attack": attack, "epsilon": float(eps), "num_steps": int(steps), "num_noise_vec": int(m),
            "no_grad": bool(no_grad), "base_attack": bool(base)}


def empirical_robust_accuracy(logs: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """``(radii, accuracy)``, both (len(logs),) float64 sorted by radius: for each attacked prediction log (an
    ``analysis.EvalLog`` whose file name names an attack), its epsilon and the fraction of its rows predicted
    correctly (abstentions count as wrong). Raises a one-line ValueError for a log whose name names no attack."""
    pairs = []
    for log in logs:
        settings = parse_attack(log.path)
        if settings is None:
            raise ValueError(f"{log.path}: the file name names no attack (pgd_eps_<eps>_steps_<T>_m_<m>)")
        pairs.append((settings["epsilon"], analysis.prediction_summary(log).accuracy))
    pairs.sort()
    return np.array([p[0] for p in pairs], np.float64), np.array([p[1] for p in pairs], np.float64)


def robustness_table(attack_logs: Sequence, certified_log=None) -> str:
    """Markdown table, one column per attack radius: empirical robust accuracy, and (with ``certified_log``, a
    certification log of the same model and sigma) the certified accuracy at the same radii."""
    radii, empirical = empirical_robust_accuracy(attack_logs)
    out = ["| radius | " + " | ".join(f"{r:.3}" for r in radii) + " |", "| --- |" + " --- |" * len(radii),
           "| empirical (attack) | " + " | ".join(f"{a:.3f}" for a in empirical) + " |"]
    if certified_log is not None:
        certified = analysis.certified_accuracy(certified_log, radii)
        out.append("| certified | " + " | ".join(f"{a:.3f}" for a in certified) + " |")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: prints ``robustness_table``; returns 0, or 2 after a one-line error."""
    parser = argparse.ArgumentParser(prog="python -m smoothjax.empirical_robustness",
                                     description="Empirical robust accuracy of attacked PREDICT logs per radius.")
    parser.add_argument("logs", nargs="+", metavar="ATTACK_LOG")
    parser.add_argument("--certified", metavar="CERTIFY_LOG", help="certification log to compare with")
    args = parser.parse_args(argv)
    try:
        logs = [analysis.read_log(p) for p in args.logs]
        certified = analysis.read_log(args.certified) if args.certified else None
        sys.stdout.write(robustness_table(logs, certified))
    except (ValueError, OSError) as error:
        print(f"error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
