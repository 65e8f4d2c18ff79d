"""SIAM's adversarial-training loss (Nemcovsky et al.): L-inf PGD / EPGD examples of the stochastic model, mixed loss.

``adversarial_training_loss(model, ...)`` returns a loss function with the signature of ``smoothjax.training``::

    loss_fn(params, model_state, batch, key) -> (loss, (new_model_state, metrics))

Per step: craft ``x_adv`` with ``linf_attacks.pgd_linf`` against the stochastic model in inference mode
(batch-norm running statistics, parameters frozen; the reference calls ``net.eval()`` to attack), with
``m_train`` passes per step (EPGD when > 1); then, in training mode with fresh noise,
``loss = adv_weight * CE(f(x_adv)) + (1 - adv_weight) * CE(f(x))`` (the reference's 0.5 / 0.5), the clean pass
first and the adversarial pass second, batch-norm statistics updated by both in that order, as in the reference.
``attack='none'`` is plain training of the (stochastic) model: ``CE(f(x))``.

Config (``loss='siam'``): the sub-dict ``config.siam`` with ``attack`` (none | pgd), ``epsilon`` (pixel units,
8/255), ``num_steps`` (7), ``step_size`` (0 = epsilon / 4), ``m_train`` (1 = PGD, 8 = the paper's EPGD),
``adv_weight`` (0.5), ``pass_loop`` (auto | vmap | scan, see ``linf_attacks.expectation_loss``); plus
``eval_num_samples`` / ``eval_mode`` for the smoothed evaluation of ``eval_apply_fn``.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from smoothjax.models import is_stochastic, make_apply_fn, make_stochastic_apply_fn
from smoothjax.models.noise_layers import NOISE_RNG
from smoothjax.noise import SMOOTHED_EVAL_SEED_OFFSET
from smoothjax.siam.inference import check_mode, smoothed_apply_fn
from smoothjax.siam.linf_attacks import pgd_linf, resolve_pass_loop
from smoothjax.training import apply_train_mode, cross_entropy

ATTACKS = ("none", "pgd")


def check_settings(*, attack: str, epsilon, num_steps, step_size, m_train, adv_weight) -> None:
    """Raises a one-line ValueError naming the first SIAM training setting that is not allowed."""
    if attack not in ATTACKS:
        raise ValueError(f"attack={attack!r} is not allowed; choose one of: {', '.join(ATTACKS)}")
    for name, value in (("epsilon", epsilon), ("step_size", step_size)):
        if not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise ValueError(f"{name}={value!r} is not allowed; it must be a number in [0, 1] (pixel L-inf units, "
                             "e.g. 8/255)")
    for name, value in (("num_steps", num_steps), ("m_train", m_train)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is not allowed; it must be an integer >= 1")
    if not (isinstance(adv_weight, (int, float)) and 0 <= adv_weight <= 1):
        raise ValueError(f"adv_weight={adv_weight!r} is not allowed; it must be a number in [0, 1]")


def train_mode_logits(model: nn.Module, params, model_state, images, key):
    """One training-mode pass ``(logits, new_model_state)``; noise from ``key`` when the model is stochastic."""
    rngs = {"rngs": {NOISE_RNG: key}} if is_stochastic(model) else {}
    return apply_train_mode(model, params, model_state, images, **rngs)


def adversarial_training_loss(model: nn.Module, *, attack: str = "pgd", epsilon: float = 8 / 255,
                              num_steps: int = 7, step_size: float = 0.0, m_train: int = 1,
                              adv_weight: float = 0.5, pass_loop: str = "auto") -> Callable:
    """SIAM's loss (module docstring). ``epsilon``/``step_size`` in pixel units (``step_size`` 0 = epsilon / 4).

    ``pass_loop`` (``auto`` | ``vmap`` | ``scan``): how EPGD's m_train passes run (``linf_attacks.expectation_loss``).
    Metrics: ``loss``, ``accuracy`` (clean, training-mode pass), ``adv_accuracy`` (on ``x_adv``; equals
    ``accuracy`` when ``attack='none'``).
    """
    check_settings(attack=attack, epsilon=epsilon, num_steps=num_steps, step_size=step_size, m_train=m_train,
                   adv_weight=adv_weight)
    resolve_pass_loop(pass_loop)  # one-line ValueError before anything is traced
    attack_apply = make_stochastic_apply_fn(model)
    step = step_size or epsilon / 4

    def loss_fn(params, model_state, batch, key):
        x, y = batch["image"], batch["label"]
        attack_key, clean_key, adv_key = jax.random.split(key, 3)
        logits, state = train_mode_logits(model, params, model_state, x, clean_key)
        clean_loss = cross_entropy(logits, y)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        if attack == "none":
            return clean_loss, (state, {"loss": clean_loss, "accuracy": accuracy, "adv_accuracy": accuracy})
        frozen = jax.lax.stop_gradient({"params": params, **model_state})
        x_adv = pgd_linf(attack_apply, frozen, x, y, attack_key, epsilon=epsilon, num_steps=num_steps,
                         step_size=step, num_passes=m_train, pass_loop=pass_loop)
        adv_logits, state = train_mode_logits(model, params, state, x_adv, adv_key)
        loss = adv_weight * cross_entropy(adv_logits, y) + (1 - adv_weight) * clean_loss
        adv_accuracy = jnp.mean(jnp.argmax(adv_logits, -1) == y)
        return loss, (state, {"loss": loss, "accuracy": accuracy, "adv_accuracy": adv_accuracy})

    return loss_fn


_LOSS_FIELDS = ("attack", "epsilon", "num_steps", "step_size", "m_train", "adv_weight", "pass_loop")


def loss_from_config(model: nn.Module, config) -> Callable:
    """``adversarial_training_loss`` from ``config.siam`` (fields in the module docstring; their defaults are written
    once, in ``smoothjax/jobs/defaults.py``); the factory registered as ``config.loss = 'siam'`` in
    ``smoothjax.jobs.train.LOSSES``."""
    return adversarial_training_loss(model, **{k: config.siam[k] for k in _LOSS_FIELDS})


def eval_apply_fn(model: nn.Module, config) -> Callable:
    """The classifier the training loop evaluates: ``make_apply_fn(model)`` for deterministic models; for
    stochastic ones the smoothed classifier (``config.siam.eval_mode`` with ``eval_num_samples`` passes) with the
    fixed key ``key(config.seed + noise.SMOOTHED_EVAL_SEED_OFFSET)``, as ``f(variables, images) -> (B, K) scores`` —
    so the loop's clean accuracy is the smoothed clean accuracy that ``keep_best_by`` selects on."""
    if not is_stochastic(model):
        return make_apply_fn(model)
    mode = check_mode(config.siam.eval_mode)
    return smoothed_apply_fn(make_stochastic_apply_fn(model), num_samples=config.siam.eval_num_samples, mode=mode,
                             key=jax.random.key(config.seed + SMOOTHED_EVAL_SEED_OFFSET))
