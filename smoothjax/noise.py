"""Gaussian noise for randomized smoothing, as pure functions of an explicit PRNG key.

All noise is in *pixel units*: images live in [0, 1] and the models normalise their inputs in their
own first layer, so a noise level ``sigma`` means exactly what it means in Cohen et al. (2019) and the
reference implementations (which add ``randn_like(x) * sigma`` before normalisation). Noisy images are
*not* clipped to [0, 1], as in the reference code: the certificate is about x + N(0, sigma^2 I).

The random bits do not depend on how the arrays are sharded (``jax_threefry_partitionable``, the
default in current JAX), so the same key gives the same noise on 1 device and on a pod.

Keys are always passed explicitly and never defaulted. Where one key must feed several independent streams, the
stream is ``jax.random.fold_in(key, TAG)`` with one of the tags below, defined here and nowhere else, so that no two
parts of the library can draw from the same stream by accident (the tags fold a per-image key, which the noise
streams never fold directly: certification splits it first, then folds in chunk indices). The data loader's NumPy
generators are seeded apart from these (``data.loader``: ``[seed, stream, ...]``) and never touch a JAX key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# PRNG stream tags (``fold_in`` constants). Changing one changes the numbers of every log made with it.
ATTACK_STREAM = 0x5AD  # certify.py's predict mode under attack: the attack's noise and directions, per image key
UNIFORM_STREAM = 0x52435055  # randomized Clopper-Pearson: the uniform u of each image ("RCPU")
SMOOTHED_EVAL_SEED_OFFSET = 7919  # training-time evaluation of a stochastic (SIAM) model: key(config.seed + 7919)


def check_sigma(sigma: float) -> float:
    """Returns ``float(sigma)`` or raises a one-line ``ValueError`` when it is not a finite number >= 0."""
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        raise ValueError(f"sigma={sigma!r} is not a number; sigma must be a float >= 0 (pixel units)") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"sigma={sigma!r} is not allowed; sigma must be a finite float >= 0 (pixel units)")
    return value


def gaussian_noise(key: jax.Array, shape, sigma: float, dtype=jnp.float32) -> jax.Array:
    """Draws i.i.d. N(0, sigma^2) noise.

    Args:
      key: a JAX PRNG key (new-style or raw uint32[2]).
      shape: output shape, any rank.
      sigma: standard deviation in pixel units (images in [0, 1]); a Python float >= 0.
      dtype: floating dtype of the result.

    Returns:
      An array of ``shape`` and ``dtype`` whose entries are independent N(0, sigma^2) draws.
      ``sigma = 0`` gives exact zeros.
    """
    sigma = check_sigma(sigma)
    return sigma * jax.random.normal(key, shape, dtype)


def add_gaussian_noise(key: jax.Array, images: jax.Array, sigma: float) -> jax.Array:
    """Returns ``images + N(0, sigma^2 I)`` in float32 (same shape), without clipping.

    The noise is drawn and added in float32 whatever the image dtype (bfloat16 noise would take about 128 distinct
    values per octave, not a Gaussian); the model casts to its compute dtype inside. Float32 images give the noise
    they always did; bfloat16 images give exactly the float32 result of the same (widened) images.

    Args:
      key: PRNG key.
      images: any shape, typically (B, H, W, C) in [0, 1], any float dtype.
      sigma: noise standard deviation in pixel units.
    """
    return images.astype(jnp.float32) + gaussian_noise(key, images.shape, sigma, jnp.float32)


def add_channel_noise(key: jax.Array, images: jax.Array, noise_sd) -> jax.Array:
    """Returns ``images + noise_sd * z`` in float32 (same shape), z ~ N(0, I) drawn in float32, without clipping.

    As ``add_gaussian_noise``, but ``noise_sd`` may be traced (a jitted noise sweep compiles once) and may hold one
    standard deviation per channel: a float or a (C,) array in pixel units, broadcast against the last axis of
    ``images`` (any shape, typically (B, H, W, C) in [0, 1], any float dtype). Not checked (it may be traced):
    callers check it once outside jit (``siam.evaluation.as_noise_sd``). Float32 images give exactly
    ``images + noise_sd * normal(key, images.shape)``; bfloat16 images the float32 result of the widened images.
    """
    sd = jnp.asarray(noise_sd, jnp.float32)
    return images.astype(jnp.float32) + sd * jax.random.normal(key, images.shape, jnp.float32)


def noisy_copies(key: jax.Array, images: jax.Array, sigma: float, num_copies: int) -> jax.Array:
    """Returns ``num_copies`` independently noised copies of a batch.

    Args:
      key: PRNG key.
      images: (B, H, W, C) in [0, 1].
      sigma: noise standard deviation in pixel units.
      num_copies: m >= 1, the number of noise draws per image (a Python int).

    Returns:
      (m, B, H, W, C) float32: ``out[j, b] = images[b] + sigma * z[j, b]`` with all z i.i.d. N(0, I), drawn and
      added in float32 whatever the image dtype (as ``add_gaussian_noise``). The leading axis is the noise axis,
      ready for ``jax.vmap`` over noise draws (multi-noise attacks, SmoothAdv).
    """
    if int(num_copies) != num_copies or num_copies < 1:
        raise ValueError(f"num_copies={num_copies!r} is not allowed; it must be an integer >= 1")
    noise = gaussian_noise(key, (int(num_copies),) + tuple(images.shape), sigma, jnp.float32)
    return images.astype(jnp.float32)[None] + noise
