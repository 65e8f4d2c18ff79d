"""MACER (Zhai et al., ICLR 2020): maximise the certified radius of the soft smoothed classifier, without attacks.

For an image x with label y and k noise draws ``delta_1..delta_k ~ N(0, sigma^2 I)`` of the base classifier's logits
``z_i = f(x + delta_i)``, the paper's Algorithm 1 / Eq. (7)-(8) minimises over a batch of B images::

    L = (1/B) sum_b [ -log g_y(x_b) ]  +  lambda * (1/B) sum_{b in G} (sigma / 2) * max(gamma - xi_b, 0)

    g(x)    = (1/k) sum_i softmax(z_i)                  the soft smoothed classifier (classification loss)
    q(x)    = (1/k) sum_i softmax(beta * z_i)           its inverse-temperature-beta version (robustness loss)
    xi_b    = Phi^-1(q_{y}(x_b)) - Phi^-1(max_{c != y} q_c(x_b))     so (sigma / 2) * xi_b is the certified radius of q
    G       = images whose top class under q is y (the soft smoothed classifier is correct)

``Phi^-1`` is the standard normal quantile (``jax.scipy.special.ndtri``). Inside G, ``y`` is the top class, so
``xi_b`` is the gap between the top two quantiles, ``xi_b >= 0``; the hinge keeps only images whose radius is below
``sigma * gamma / 2`` (``xi_b <= gamma``) and images where either quantile is infinite (q rounded to 0 or 1) are left
out, as in the released code (github.com/RuntianZ/macer, ``macer.py``: the mask ``~isnan & ~isinf & |xi| <= gamma``).
``log g_y`` uses ``log(g_y + 1e-10)``, the reference's guard. Both terms are sums over images divided by B, as there.

Published defaults (the paper's Section 4.1 and the released ``main.py``): k = 16 noise draws, beta = 16, gamma = 8;
lambda = 12 on CIFAR-10 at sigma 0.25 and 0.5 and lambda = 4 at sigma 1.0 (the paper's CIFAR-10 settings; the
released ``main.py`` defaults to lambda 12, and Jeong & Shin's re-run uses 16 / 16 / 6 on MNIST). CIFAR-10 recipe:
ResNet-110, 440 epochs of batch 64, SGD lr 0.01, momentum 0.9, weight decay 5e-4, divided by 10 at epochs 200 and 400
(``configs/cifar10_macer.py``). Published
CIFAR-10 average certified radius (MACER README, Performance table): 0.556 / 0.726 / 0.792 at sigma 0.25 / 0.5 / 1.0.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri

from smoothjax.certified_training.noisy_logits import mean_softmax, noisy_train_logits
from smoothjax.noise import check_sigma

LOG_GUARD = 1e-10  # the reference's log(g_y + 1e-10)


def check_settings(*, sigma, num_noise_vec, lbd, beta, gamma, deferred_epochs=0) -> None:
    """Raises a one-line ValueError naming the first MACER setting that is not allowed."""
    check_sigma(sigma)
    if isinstance(num_noise_vec, bool) or not isinstance(num_noise_vec, int) or num_noise_vec < 1:
        raise ValueError(f"num_noise_vec={num_noise_vec!r} is not allowed; it must be an integer >= 1 (k, the noise "
                         "draws of the soft smoothed classifier; the paper uses 16)")
    for name, value, low in (("lbd", lbd, ">= 0"), ("beta", beta, "> 0"), ("gamma", gamma, "> 0")):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf")
        if not ok or (low == "> 0" and value == 0):
            raise ValueError(f"{name}={value!r} is not allowed; it must be a finite number {low}")
    if isinstance(deferred_epochs, bool) or not isinstance(deferred_epochs, int) or deferred_epochs < 0:
        raise ValueError(f"deferred_epochs={deferred_epochs!r} is not allowed; it must be an integer >= 0 (epochs "
                         "trained with lambda = 0 first)")


def macer_terms(logits: jax.Array, labels: jax.Array, *, sigma: float, beta: float, gamma: float) -> dict:
    """Per-image MACER quantities of one batch (module docstring).

    Args:
      logits: (B, k, K) base-classifier logits of k noisy copies of each image; labels: (B,) int.
      sigma: noise level in pixel units (the radius is in the same units); beta: inverse temperature of q;
      gamma: hinge threshold on xi.

    Returns:
      ``classification`` (B,): ``-log(g_y + 1e-10)``; ``robustness`` (B,): ``(sigma / 2) * max(gamma - xi, 0)`` on
      the images of G with finite xi, 0 elsewhere; ``radius`` (B,): ``(sigma / 2) * xi`` of q where the top class is
      the label and xi is finite, else 0 (pixel L2 units; a soft surrogate, not a certificate); ``in_hinge`` (B,)
      bool: the images the robustness term acts on.
    """
    g = mean_softmax(logits)
    classification = -jnp.log(jnp.take_along_axis(g, labels[:, None], axis=1)[:, 0] + LOG_GUARD)
    q = mean_softmax(beta * logits)
    top2, top2_idx = jax.lax.top_k(q, 2)
    correct = top2_idx[:, 0] == labels
    xi_raw = jax.lax.stop_gradient(ndtri(top2[:, 0]) - ndtri(top2[:, 1]))
    finite = correct & jnp.isfinite(xi_raw)
    in_hinge = finite & (xi_raw <= gamma)
    # Double where: masked-out images take quantiles of safe probabilities, so no inf/nan reaches the gradient.
    q0 = jnp.where(finite, top2[:, 0], 0.75)
    q1 = jnp.where(finite, top2[:, 1], 0.25)
    xi = ndtri(q0) - ndtri(q1)
    robustness = jnp.where(in_hinge, 0.5 * sigma * (gamma - xi), 0.0)
    radius = jnp.where(finite, 0.5 * sigma * jax.lax.stop_gradient(xi), 0.0)
    return {"classification": classification, "robustness": robustness, "radius": radius, "in_hinge": in_hinge}


def macer_objective(logits: jax.Array, labels: jax.Array, *, sigma: float, lbd: float, beta: float,
                    gamma: float) -> dict:
    """The MACER loss of a batch and its parts, scalars: ``loss = classification + lbd * robustness`` (both sums
    over the B images divided by B), plus the mean soft radius and the fraction of images in the hinge."""
    t = macer_terms(logits, labels, sigma=sigma, beta=beta, gamma=gamma)
    classification, robustness = t["classification"].mean(), t["robustness"].mean()
    return {"loss": classification + lbd * robustness, "classification": classification, "robustness": robustness,
            "soft_radius": t["radius"].mean(), "in_hinge": t["in_hinge"].mean()}


def macer_loss(model: nn.Module, *, sigma: float, num_noise_vec: int = 16, lbd: float = 12.0, beta: float = 16.0,
               gamma: float = 8.0, deferred_epochs: int = 0) -> Callable:
    """The MACER training loss for ``model`` (module docstring: equations and published defaults).

    Args:
      model: a Flax classifier taking NHWC images in [0, 1] (``train=`` argument, as ``smoothjax.models``).
      sigma: Gaussian noise level in pixel units.
      num_noise_vec: k >= 1 noise draws per image.
      lbd: lambda, the weight of the robustness (radius hinge) term.
      beta: inverse temperature of the softmax in the robustness term (> 0).
      gamma: hinge threshold on the gap of normal quantiles (> 0).
      deferred_epochs: train the first ``deferred_epochs`` epochs (``batch["epoch"]``, added by the training loop)
        with lambda = 0, i.e. on the soft smoothed classifier's cross-entropy alone, then with ``lbd``: Jeong & Shin's
        ``--deferred`` MACER baseline (their logs' ``macer_deferred30``: lambda 0 for 30 of 90 epochs), for models
        that the robustness term derails from scratch. 0 = the paper's MACER; without ``epoch`` in the batch, ``lbd``
        throughout.

    Returns:
      ``loss_fn(params, model_state, batch, key) -> (loss, (new_model_state, metrics))`` (the contract of
      ``smoothjax.training``); ``batch`` holds ``image`` (B, H, W, C) and ``label`` (B,). The noise of a call is
      ``noisy_logits.noisy_train_logits``'s from ``key``; batch norm sees the B*k noisy rows. Metrics: ``loss``,
      ``classification``, ``robustness``, ``soft_radius``, ``in_hinge``, ``accuracy`` (argmax of the soft
      smoothed classifier g) and ``lbd`` (the lambda of this step).
    """
    check_settings(sigma=sigma, num_noise_vec=num_noise_vec, lbd=lbd, beta=beta, gamma=gamma,
                   deferred_epochs=deferred_epochs)
    sigma, k = float(sigma), int(num_noise_vec)
    lbd, beta, gamma = float(lbd), float(beta), float(gamma)

    def loss_fn(params, model_state, batch, key):
        logits, new_state = noisy_train_logits(model, params, model_state, batch["image"], key, sigma=sigma,
                                               num_copies=k)
        lbd_now = jnp.float32(lbd)
        if deferred_epochs and "epoch" in batch:
            lbd_now = jnp.where(batch["epoch"] >= deferred_epochs, lbd_now, 0.0)
        metrics = macer_objective(logits, batch["label"], sigma=sigma, lbd=lbd_now, beta=beta, gamma=gamma)
        metrics["lbd"] = lbd_now
        metrics["accuracy"] = jnp.mean(jnp.argmax(mean_softmax(logits), -1) == batch["label"])
        return metrics["loss"], (new_state, metrics)

    return loss_fn


def loss_from_config(model: nn.Module, config) -> Callable:
    """``macer_loss`` with ``config.sigma`` and ``config.macer`` (``num_noise_vec``, ``lbd``, ``beta``, ``gamma``,
    ``deferred_epochs``; defaults in ``smoothjax/jobs/defaults.py``): the factory registered as
    ``config.loss = 'macer'`` in ``smoothjax.jobs.train.LOSSES``."""
    return macer_loss(model, sigma=config.sigma, **config.macer)
