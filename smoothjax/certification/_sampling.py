"""Monte Carlo sampling of the base classifier under noise: the class counts every certificate is decided from.

``sample_counts`` draws exactly ``num`` noisy copies of each image (Gaussian, or the exact grid noise of
``sound_noise``) in chunks of ``batch_size`` inside a ``lax.fori_loop`` and counts the argmax classes. Sampling is
``vmap``-ed over images, so a batch sharded over a mesh axis stays sharded; the noise of image ``i`` depends only on
its own key, and the random bits do not depend on sharding (``jax_threefry_partitionable``), so counts are the same
on 1 or many devices. Draw ``j`` of an image's stream is the same whatever ``num``, so CERTIFY, the sequential test
and the randomized bound see the same draws for the same key. Argument checks shared by the package live here too.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from smoothjax import parallel
from smoothjax.certification import sound_noise
from smoothjax.noise import check_sigma, gaussian_noise

_INT32_MAX = 2**31 - 1


# ----------------------------------------------------------------------------------------------- validation
def check_alpha(alpha) -> float:
    """``float(alpha)``, or a one-line ValueError unless it is a number in (0, 1)."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha={alpha!r} is not allowed; alpha must be a Python float in (0, 1) (static)") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"alpha={alpha!r} is not allowed; alpha must be a Python float in (0, 1)")
    return value


def check_alpha_or_traced(alpha):
    """``check_alpha(alpha)`` for a concrete alpha; a traced alpha is returned as it is (checked on the host: an
    alpha outside (0, 1) gives NaN bounds and abstentions, ``_host_stats.alpha_operand``)."""
    try:
        float(alpha)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return alpha
    except (TypeError, ValueError):
        pass
    return check_alpha(alpha)


def check_positive_sigma(sigma) -> float:
    """``float(sigma)``, or a one-line ValueError unless it is finite and > 0 (pixel units)."""
    value = check_sigma(sigma)
    if value <= 0.0:
        raise ValueError(f"sigma={sigma!r} is not allowed; certification needs sigma > 0 (pixel units)")
    return value


def check_int(name: str, value, low: int) -> int:
    """``int(value)``, or a one-line ValueError unless it is a Python int in [low, 2^30 - 1]."""
    try:
        ok = not isinstance(value, bool) and int(value) == value and low <= int(value) <= _INT32_MAX // 2
    except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
        ok = False
    if not ok:
        raise ValueError(f"{name}={value!r} is not allowed; it must be a Python int in [{low}, {_INT32_MAX // 2}]")
    return int(value)


def as_keys(key, x):
    """Typed keys: shape () for one image (H, W, C), shape (B,) for a batch (B, H, W, C); a single key for a batch is
    split into ``jax.random.split(key, B)``. Raw uint32 keys are wrapped."""
    if x.ndim not in (3, 4):
        raise ValueError(f"x shape {x.shape} is not allowed; need one image (H, W, C) or a batch (B, H, W, C)")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x dtype {x.dtype} is not allowed; images must be floating point in [0, 1]")
    key = key if isinstance(key, jax.Array) else jnp.asarray(key)
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key.astype(jnp.uint32))
    if x.ndim == 3:
        if key.shape != ():
            raise ValueError(f"key shape {key.shape} is not allowed for one image; need a single key")
        return key
    if key.shape == ():
        return jax.random.split(key, x.shape[0])
    if key.shape != (x.shape[0],):
        raise ValueError(f"key shape {key.shape} is not allowed for {x.shape[0]} images; need one key or {x.shape[0]}")
    return key


def slack_of(x, sigma: float, sound: bool) -> float:
    """The amount sound noise moves every bound (``sound_noise.certification_slack`` of one image), else 0."""
    return sound_noise.certification_slack(sigma, x[0].size if x.ndim == 4 else x.size) if sound else 0.0


# ------------------------------------------------------------------------------------------------- sampling
def chunk_counts(key, i, x, apply_fn, variables, sigma, chunk, num, num_classes, sound=False):
    """Class counts (K,) of draws ``i * chunk ... i * chunk + chunk - 1`` of image x's stream (key); draws >= num
    are masked. Draw j of the stream is the same whatever ``num``, so streams of different lengths share prefixes."""
    noisy = (sound_noise.sound_noisy_copies(key, x, i * chunk, chunk, sigma) if sound
             else x.astype(jnp.float32)[None] + gaussian_noise(jax.random.fold_in(key, i), (chunk,) + x.shape, sigma))
    logits = apply_fn(variables, noisy)
    if logits.shape != (chunk, num_classes):
        raise ValueError(f"apply_fn output shape {logits.shape} is not allowed; need (batch, {num_classes})")
    pred = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    valid = i * chunk + jnp.arange(chunk, dtype=jnp.int32) < num
    hits = (pred[:, None] == jnp.arange(num_classes, dtype=jnp.int32)[None, :]) & valid[:, None]
    return jnp.sum(hits, axis=0, dtype=jnp.int32)


def counts_one(key, x, apply_fn, variables, sigma, num, batch_size, num_classes, sound=False):
    """Class counts (K,) of the first ``num`` draws of one image's stream, ``batch_size`` at a time."""
    chunk = min(batch_size, num)
    body = lambda i, c: c + chunk_counts(key, i, x, apply_fn, variables, sigma, chunk, num, num_classes, sound)
    return jax.lax.fori_loop(0, -(-num // chunk), body, jnp.zeros((num_classes,), jnp.int32))


def sample_counts(key, apply_fn: Callable, variables, x, *, sigma: float, num: int, batch_size: int,
                  num_classes: int, sound: bool = False, batch_axis=None) -> jax.Array:
    """Counts of the base classifier's argmax over exactly ``num`` Gaussian-noised copies of each image.

    Args:
      key: PRNG key (``jax.random.key`` or raw ``PRNGKey``). For one image a single key; for a batch of B images
        a single key (split into ``jax.random.split(key, B)``, one per image) or an array of B keys.
      apply_fn: ``apply_fn(variables, images (m, H, W, C)) -> logits (m, num_classes)``; static.
      variables: model variables, passed through unchanged.
      x: one image (H, W, C) or a batch (B, H, W, C), float, pixel units in [0, 1].
      sigma: noise standard deviation in pixel units (noise is ``sigma * N(0, I)``, no clipping); static.
      num: number of noise draws per image, exactly (need not be a multiple of ``batch_size``); static.
      batch_size: noisy copies of one image evaluated per step of a ``lax.fori_loop`` over ceil(num / batch_size)
        chunks (the last one masked); memory is bounded by it, not by ``num``. For a batch of B images each step
        evaluates B * batch_size copies (images are ``vmap``-ed, which keeps a sharded batch sharded); static.
      num_classes: K; static.
      sound: static; draw ``sound_noise`` grid noise (x on the 1/255 grid) instead of float Gaussian noise.
      batch_axis: static; the mesh axis (of the mesh set by ``jax.set_mesh``) the batch is sharded along, for a
        batch that cannot say so itself: under Auto axes inside a jit of your own. None = read from ``x``.

    Returns:
      int32 counts (K,) for one image or (B, K) for a batch, each row summing to ``num``. Row i depends only on
      image i and its key: it equals ``sample_counts(keys[i], ..., x[i], ...)``, whatever the batching or sharding.
      A batch sharded over a mesh axis (Explicit axes, or a concrete array under any mesh) is sampled on each
      device's own rows (``parallel.per_shard``) and the counts stay sharded the same way.
    """
    sigma = check_sigma(sigma)
    num, batch_size = check_int("num", num, 1), check_int("batch_size", batch_size, 1)
    num_classes = check_int("num_classes", num_classes, 2)
    x = jnp.asarray(x)
    keys = as_keys(key, x)
    if sound:
        sound_noise.check_on_grid(x)
    one = functools.partial(counts_one, apply_fn=apply_fn, sigma=sigma, num=num, batch_size=batch_size,
                            num_classes=num_classes, sound=bool(sound))
    if x.ndim == 3:
        return one(keys, x, variables=variables)
    return parallel.per_shard(jax.vmap(lambda k, xs, v: one(k, xs, variables=v), in_axes=(0, 0, None)), x, keys, x,
                              replicated=(variables,), where=parallel.named_batch_axis(x, batch_axis))


def certify_counts(key, apply_fn: Callable, variables, x, *, sigma: float, n0: int, n: int, batch_size: int,
                   num_classes: int, sound: bool):
    """CERTIFY's draws: ``(keys, selection counts, estimation counts, slack)``.

    Each image's key is split into a selection key (``n0`` draws) and an independent estimation key (``n`` draws);
    ``keys`` are the per-image keys (``as_keys``), the counts (..., K) int32, ``slack`` the sound-noise allowance
    (``slack_of``). Shared by ``cohen.certify`` and ``randomized.certify_randomized``, so both see the same draws.
    """
    n0, n = check_int("n0", n0, 1), check_int("n", n, 1)
    x = jnp.asarray(x)
    keys = as_keys(key, x)
    split = jax.vmap(jax.random.split)(keys) if keys.ndim else jax.random.split(keys)
    common = dict(sigma=sigma, num_classes=num_classes, batch_size=batch_size, sound=sound)
    counts0 = sample_counts(split[..., 0], apply_fn, variables, x, num=n0, **common)
    counts = sample_counts(split[..., 1], apply_fn, variables, x, num=n, **common)
    return keys, counts0, counts, slack_of(x, sigma, sound)
