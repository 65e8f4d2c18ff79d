"""Consistency regularization (Jeong & Shin, NeurIPS 2020): Gaussian augmentation plus agreement of the noisy copies.

For an image x with label y, m noise draws ``delta_1..delta_m ~ N(0, sigma^2 I)`` and the base classifier's softmax
``p_i = softmax(f(x + delta_i))`` with mean ``p_hat = (1/m) sum_i p_i``, the loss (the paper's Eq. (7) with the
entropy term of its Eq. (8), as in its released ``consistency_loss(..., loss='default')``) is::

    L(x, y) = (1/m) sum_i CE(f(x + delta_i), y)  +  lambda * (1/m) sum_i KL(p_hat || p_i)  +  eta * H(p_hat)

with ``KL(p_hat || p_i) = sum_k p_hat_k (log p_hat_k - log p_i,k)`` (the KL is taken *from the mean*: the mean is
the target distribution, each copy the one moved towards it) and ``H(p_hat) = -sum_k p_hat_k log p_hat_k``; the batch
loss is the mean over images. Gradients flow through ``p_hat`` as well (no stop-gradient), as in the reference.
Logarithms of ``p_hat`` use ``max(p_hat, 1e-20)``, the reference's clamp.

Published defaults (the paper's Section 4 and Appendix, and the released ``EXPERIMENTS.MD`` / certification logs of
github.com/jh-jeong/smoothing-consistency): m = 2 noise draws, eta = 0.5; lambda = 10 on CIFAR-10 at sigma 0.25,
0.5 and 1.0 (the released ResNet-110 logs ``lbd_10.0/eta_0.5``, ACR 0.544 / 0.720 / 0.756; the paper also reports
lambda = 20 at sigma 0.25 and 0.5), lambda = 20 on MNIST at every sigma and lambda = 5 with SmoothAdv. The reference
splits a batch of 256 images into m mini-batches of 256/m images and takes one step per mini-batch on its m noisy
copies (256 rows); ``configs/cifar10_consistency.py`` reproduces that with ``batch_size = 256 // m``.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from smoothjax.certified_training.noisy_logits import mean_softmax, noisy_train_logits
from smoothjax.noise import check_sigma

LOG_FLOOR = 1e-20  # the reference's clamp before log(p_hat)


def check_settings(*, sigma, num_noise_vec, lbd, eta) -> None:
    """Raises a one-line ValueError naming the first Consistency setting that is not allowed."""
    check_sigma(sigma)
    if isinstance(num_noise_vec, bool) or not isinstance(num_noise_vec, int) or num_noise_vec < 2:
        raise ValueError(f"num_noise_vec={num_noise_vec!r} is not allowed; it must be an integer >= 2 (m, the noise "
                         "draws whose predictions are made consistent; the paper uses 2)")
    for name, value in (("lbd", lbd), ("eta", eta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise ValueError(f"{name}={value!r} is not allowed; it must be a finite number >= 0")


def consistency_terms(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The two regularisers of one batch: ``(kl, entropy)``, each (B,).

    Args:
      logits: (B, m, K) logits of the m noisy copies of each image.

    Returns:
      ``kl[b] = (1/m) sum_i KL(p_hat_b || p_b,i)`` and ``entropy[b] = H(p_hat_b)``, in nats, where ``p_b,i`` is the
      softmax of ``logits[b, i]`` and ``p_hat_b`` their mean over i. Both are >= 0 (up to rounding).
    """
    p_hat = mean_softmax(logits)
    log_p_hat = jnp.log(jnp.maximum(p_hat, LOG_FLOOR))
    log_p = jax.nn.log_softmax(logits, axis=-1)
    kl = jnp.mean(jnp.sum(p_hat[:, None] * (log_p_hat[:, None] - log_p), axis=-1), axis=1)
    entropy = -jnp.sum(p_hat * log_p_hat, axis=-1)
    return kl, entropy


def consistency_objective(logits: jax.Array, labels: jax.Array, *, lbd: float, eta: float) -> dict:
    """The Consistency loss of a batch and its parts (module docstring), scalars.

    Args:
      logits: (B, m, K) logits of the m noisy copies of each image; labels: (B,) int.
      lbd, eta: weights of the KL and entropy terms.

    Returns:
      ``{"loss", "cross_entropy", "kl", "entropy"}``: ``loss = cross_entropy + lbd * kl + eta * entropy``, each
      term averaged over the B images (and the cross-entropy over the m copies).
    """
    m = logits.shape[1]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.repeat(labels[:, None], m, axis=1)).mean()
    kl, entropy = consistency_terms(logits)
    kl, entropy = kl.mean(), entropy.mean()
    return {"loss": ce + lbd * kl + eta * entropy, "cross_entropy": ce, "kl": kl, "entropy": entropy}


def consistency_loss(model: nn.Module, *, sigma: float, num_noise_vec: int = 2, lbd: float = 10.0,
                     eta: float = 0.5) -> Callable:
    """The Consistency training loss for ``model`` (module docstring: equation and published defaults).

    Args:
      model: a Flax classifier taking NHWC images in [0, 1] (``train=`` argument, as ``smoothjax.models``).
      sigma: Gaussian noise level in pixel units.
      num_noise_vec: m >= 2 noise draws per image.
      lbd: lambda, the weight of the mean KL divergence from the copies' mean prediction.
      eta: the weight of the entropy of the mean prediction.

    Returns:
      ``loss_fn(params, model_state, batch, key) -> (loss, (new_model_state, metrics))`` (the contract of
      ``smoothjax.training``); ``batch`` holds ``image`` (B, H, W, C) and ``label`` (B,). The noise of a call is
      ``noisy_logits.noisy_train_logits``'s from ``key``; batch norm sees the B*m noisy rows. Metrics: ``loss``,
      ``cross_entropy``, ``kl``, ``entropy`` and ``accuracy`` (argmax over the B*m noisy rows).
    """
    check_settings(sigma=sigma, num_noise_vec=num_noise_vec, lbd=lbd, eta=eta)
    sigma, m, lbd, eta = float(sigma), int(num_noise_vec), float(lbd), float(eta)

    def loss_fn(params, model_state, batch, key):
        logits, new_state = noisy_train_logits(model, params, model_state, batch["image"], key, sigma=sigma,
                                               num_copies=m)
        metrics = consistency_objective(logits, batch["label"], lbd=lbd, eta=eta)
        metrics["accuracy"] = jnp.mean(jnp.argmax(logits, -1) == batch["label"][:, None])
        return metrics["loss"], (new_state, metrics)

    return loss_fn


def loss_from_config(model: nn.Module, config) -> Callable:
    """``consistency_loss`` with ``config.sigma`` and ``config.consistency`` (``num_noise_vec``, ``lbd``, ``eta``;
    defaults in ``smoothjax/jobs/defaults.py``): the factory registered as ``config.loss = 'consistency'`` in
    ``smoothjax.jobs.train.LOSSES``."""
    return consistency_loss(model, sigma=config.sigma, **config.consistency)
