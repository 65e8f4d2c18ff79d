"""The training-mode logits of m noisy copies of every image: the forward pass Consistency and MACER share.

Both losses look at the base classifier on ``x + delta_j`` for m independent ``delta_j ~ N(0, sigma^2 I)`` per image
and need the m logit vectors of each image side by side. ``noisy_train_logits`` draws the noise, runs the model once
on all B*m rows (batch norm in training mode over those rows, as the reference implementations concatenate the
copies) and returns the logits as (B, m, K). Rows are image-major, so a batch sharded over images stays sharded.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from smoothjax.noise import gaussian_noise
from smoothjax.training import apply_train_mode


def noisy_train_logits(model: nn.Module, params, model_state, images: jax.Array, key: jax.Array, *, sigma: float,
                       num_copies: int):
    """``(logits, new_model_state)`` of ``model`` in training mode on ``num_copies`` noisy copies of each image.

    Args:
      model: a Flax classifier taking NHWC images in [0, 1] (``train=`` argument, as ``smoothjax.models``).
      params, model_state: its parameters and non-parameter collections (batch-norm statistics).
      images: (B, H, W, C) in [0, 1].
      key: PRNG key of the noise: ``noise = gaussian_noise(key, (B, m, H, W, C), sigma)``, image b's copy j is
        ``images[b] + noise[b, j]`` (pixel units, no clipping).
      sigma: noise level in pixel units.
      num_copies: m >= 1 (a Python int).

    Returns:
      logits (B, m, K) float32 and the updated model state (batch statistics over the B*m rows).
    """
    b, m = images.shape[0], int(num_copies)
    noise = gaussian_noise(key, (b, m) + tuple(images.shape[1:]), sigma, images.dtype)
    rows = (images[:, None] + noise).reshape((b * m,) + tuple(images.shape[1:]))
    logits, new_state = apply_train_mode(model, params, model_state, rows)
    return logits.reshape(b, m, -1), new_state


def mean_softmax(logits: jax.Array) -> jax.Array:
    """(B, m, K) logits -> (B, K): the average over the m copies of the softmax (the soft smoothed classifier)."""
    return jnp.mean(jax.nn.softmax(logits, axis=-1), axis=1)
