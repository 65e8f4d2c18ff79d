"""The SmoothAdv loss (Salman et al. 2019): train the base classifier on adversarial examples of its smoothed version.

``smoothadv_loss(model, ...)`` returns a loss function with the signature of ``smoothjax.training``::

    loss_fn(params, model_state, batch, key) -> (loss, (new_model_state, metrics))

Per step it draws m noise vectors per image (pixel units), attacks the *soft* smoothed classifier with
``smooth_pgd_l2`` or ``smooth_ddn`` (model in inference mode, parameters frozen by ``stop_gradient``), and returns
the cross-entropy of the model in training mode on ``x_adv + noise`` with the *same* noise the attack used: on all
m noisy copies (``train_multi_noise``) or on the first copy of each image.

How this relates to the reference ``train_pgd.py``: the reference splits a batch of B images into m mini-batches
of B/m images, repeats each image m times (B rows per mini-batch) and attacks them. Without ``--train-multi-noise``
it then takes one SGD step on the B images with their first noise draw; that is exactly this loss on a batch of B
(all B images attacked with m draws at once, one step). With ``--train-multi-noise`` it takes one SGD step per
mini-batch, on B/m images times m draws; this loss takes one step on a batch of B images times m draws, so the
same estimator and the same number of steps per epoch is obtained with ``batch_size = B/m`` here (the SmoothAdv
configs do that). Batch norm sees the B*m rows of the step, as in the reference.

``batch["epoch"]`` (an int scalar, added by the training loop) drives the epsilon warm-up
``epsilon_e = min(epsilon, (e + 1) * epsilon / warmup)``; without it the full epsilon is used.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from smoothjax.models import make_apply_fn
from smoothjax.noise import check_sigma, gaussian_noise
from smoothjax.smoothadv.attacks import smooth_ddn, smooth_pgd_l2
from smoothjax.training import apply_train_mode

ATTACKS = ("none", "pgd", "ddn")


def warmup_epsilon(epsilon, epoch, warmup: int):
    """``min(epsilon, (epoch + 1) * epsilon / warmup)``: the budget of (0-based) ``epoch`` under a linear warm-up
    over ``warmup`` >= 1 epochs (the reference's ``--warmup``). ``epoch`` may be a traced integer; epsilon in pixel
    L2 units."""
    return jnp.minimum(epsilon, (jnp.asarray(epoch, jnp.float32) + 1.0) * epsilon / warmup)


def check_settings(*, sigma, attack: str, epsilon, num_steps, num_noise_vec, no_grad_attack: bool, warmup,
                   ddn_gamma=0.05) -> None:
    """Raises a one-line ValueError naming the first SmoothAdv setting that is not allowed."""
    check_sigma(sigma)
    if attack not in ATTACKS:
        raise ValueError(f"attack={attack!r} is not allowed; choose one of: {', '.join(ATTACKS)}")
    if not (isinstance(epsilon, (int, float)) and epsilon >= 0 and epsilon != float("inf")):
        raise ValueError(f"epsilon={epsilon!r} is not allowed; it must be a finite number >= 0 (pixel L2 units; "
                         "the reference's --epsilon 64 is 64/256 = 0.25)")
    for name, value in (("num_steps", num_steps), ("num_noise_vec", num_noise_vec), ("warmup", warmup)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is not allowed; it must be an integer >= 1")
    if no_grad_attack and (attack != "pgd" or num_noise_vec < 2):
        raise ValueError(f"no_grad_attack=True is not allowed with attack={attack!r}, num_noise_vec={num_noise_vec};"
                         " it needs attack='pgd' and num_noise_vec >= 2")
    if not (isinstance(ddn_gamma, (int, float)) and 0 <= ddn_gamma < 1):
        raise ValueError(f"ddn_gamma={ddn_gamma!r} is not allowed; it must be a number in [0, 1)")


def smoothadv_loss(model: nn.Module, *, sigma: float, attack: str = "pgd", epsilon: float = 0.25,
                   num_steps: int = 1, num_noise_vec: int = 1, train_multi_noise: bool = False,
                   no_grad_attack: bool = False, warmup: int = 1, ddn_gamma: float = 0.05) -> Callable:
    """The SmoothAdv loss for ``model`` (see the module docstring for the estimator and its relation to the reference).

    Args:
      model: a Flax classifier taking NHWC images in [0, 1] (``train=`` argument, as ``smoothjax.models``).
      sigma: Gaussian noise level in pixel units.
      attack: ``pgd`` (SmoothAdv_PGD), ``ddn`` (SmoothAdv_DDN) or ``none`` (Gaussian augmentation with m draws).
      epsilon: L2 budget in pixel units after warm-up.
      num_steps: attack steps T (static; the attack is unrolled, so compile time grows with T).
      num_noise_vec: m, noise draws per image for the attack (m_train in the paper).
      train_multi_noise: cross-entropy on all m noisy copies of each adversarial image, else on the first copy.
      no_grad_attack: PGD with the gradient-free estimate (needs m >= 2).
      warmup: epochs of linear epsilon warm-up (``batch["epoch"]``); 1 = none after the first epoch.
      ddn_gamma: DDN norm factor; DDN's initial norm is the warmed-up epsilon, as in the reference.

    Returns:
      ``loss_fn(params, model_state, batch, key)``; ``batch`` holds ``image`` (B, H, W, C), ``label`` (B,) and
      optionally ``epoch``. Metrics: ``loss``, ``accuracy`` (argmax on the noisy adversarial rows) and ``epsilon``.
      The noise of a call is ``sigma * jax.random.normal(jax.random.split(key)[0], (m, B, H, W, C))``, shared by the
      attack and the update; ``split(key)[1]`` seeds the attack's random directions for zero gradients.
    """
    check_settings(sigma=sigma, attack=attack, epsilon=epsilon, num_steps=num_steps, num_noise_vec=num_noise_vec,
                   no_grad_attack=no_grad_attack, warmup=warmup, ddn_gamma=ddn_gamma)
    sigma, m = float(sigma), int(num_noise_vec)
    apply_fn = make_apply_fn(model)

    def loss_fn(params, model_state, batch, key):
        x, y = batch["image"], batch["label"]
        noise_key, attack_key = jax.random.split(key)
        noise = gaussian_noise(noise_key, (m,) + tuple(x.shape), sigma)  # float32 whatever x.dtype
        eps = warmup_epsilon(epsilon, batch["epoch"], warmup) if "epoch" in batch else jnp.float32(epsilon)
        frozen = jax.lax.stop_gradient({"params": params, **model_state})
        if attack == "pgd":
            x_adv = smooth_pgd_l2(apply_fn, frozen, x, y, noise, epsilon=eps, num_steps=num_steps,
                                  no_grad=no_grad_attack, key=attack_key)
        elif attack == "ddn":
            x_adv = smooth_ddn(apply_fn, frozen, x, y, noise, epsilon=eps, num_steps=num_steps, gamma=ddn_gamma,
                               init_norm=eps, key=attack_key)
        else:
            x_adv = x
        x_adv = jax.lax.stop_gradient(x_adv)
        if train_multi_noise:  # Image-major rows (b, j): a batch sharded over images stays sharded.
            inputs = jnp.swapaxes(x_adv[None] + noise, 0, 1).reshape((-1,) + tuple(x.shape[1:]))
            labels = jnp.repeat(y, m)
        else:
            inputs, labels = x_adv + noise[0], y
        logits, new_state = apply_train_mode(model, params, model_state, inputs)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels), "epsilon": eps}
        return loss, (new_state, metrics)

    return loss_fn


def loss_from_config(model: nn.Module, config) -> Callable:
    """``smoothadv_loss`` with ``config.sigma`` and the settings of ``config.smoothadv`` (``attack``, ``epsilon``,
    ``num_steps``, ``num_noise_vec``, ``train_multi_noise``, ``no_grad_attack``, ``warmup``, ``ddn_gamma``; their
    defaults are written once, in ``smoothjax/jobs/defaults.py``); the factory registered as
    ``config.loss = 'smoothadv'`` in ``smoothjax.jobs.train.LOSSES``."""
    return smoothadv_loss(model, sigma=config.sigma, **config.smoothadv)
