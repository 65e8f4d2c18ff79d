"""An experiment for ``siam_rng_cost.py``: JAX's Gaussian draw with the Threefry rounds unrolled, bit for bit.

XLA:CPU lowers JAX's ``threefry2x32`` primitive to a 5-iteration while loop over whole arrays (~12 ns per number on
2 cores); the same 20 rounds as straight-line elementwise ops fuse into one vectorised loop (~2.6 ns). This module is
benchmark code only: the library keeps ``jax.random.normal`` (the gain on SIAM calls, 1.06-1.15x, did not pay for
1.5-2x longer compiles; see README "Performance on CPU").
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

JAX_NORMAL = jax.random.normal  # saved before siam_rng_cost patches jax.random.normal


_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry2x32(k0: jax.Array, k1: jax.Array, x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011, Random123), the hash behind JAX's default PRNG.

    ``k0``, ``k1``: uint32 key words; ``x0``, ``x1``: uint32 counter words (any equal shapes). Written as straight-line
    elementwise ops, so XLA fuses all 20 rounds into one vectorised loop (the CPU lowering of JAX's ``threefry2x32``
    primitive runs them as a 5-iteration while loop over whole arrays instead, ~4x slower per number).
    """
    u32 = jnp.uint32
    ks = (k0, k1, k0 ^ k1 ^ u32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _THREEFRY_ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ ((x1 << u32(r)) | (x1 >> u32(32 - r)))
        x0, x1 = x0 + ks[(i + 1) % 3], x1 + ks[(i + 2) % 3] + u32(i + 1)
    return x0, x1


def _fast_path(key: jax.Array, shape: tuple, dtype) -> bool:
    """True where ``standard_normal`` reproduces ``jax.random.normal`` itself faster: CPU, float32, a threefry2x32 key
    (typed or raw) under ``jax_threefry_partitionable`` (the default since JAX 0.5), fewer than 2^32 numbers, and a
    last dimension of at least 8 (or <= 1 dimension). XLA:CPU runs an elementwise fusion as one loop per dimension
    and vectorises the innermost only; the draw fuses into its consumer, which has the caller's shape, so for
    NHWC images (3 channels) the unrolled hash runs 3 lanes wide and was measured slower than JAX's own."""
    return (jax.default_backend() == "cpu" and np.dtype(dtype) == np.float32 and jax.config.jax_threefry_partitionable
            and str(jax.random.key_impl(key)) == "threefry2x32" and 0 < math.prod(shape) < 2**32
            and (len(shape) <= 1 or shape[-1] >= 8))


def standard_normal(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """``z ~ N(0, I)`` of ``shape`` and ``dtype``: exactly ``jax.random.normal(key, shape, dtype)``, faster on CPU.

    Guarantee: the same values bit for bit as ``jax.random.normal`` (so the same distribution and the same draws as
    before this function existed). Where ``_fast_path`` holds (CPU, float32, threefry2x32 keys, partitionable
    threefry, last dimension >= 8) it recomputes JAX's own recipe — counter = row-major flat index split into (hi, lo)
    words, bits = xor of the two Threefry-2x32 output words, the top 23 bits as a uniform in [nextafter(-1, 0), 1),
    ``sqrt(2) * erfinv(u)`` — over the flattened array with the 20 rounds unrolled (``_threefry2x32``): measured
    ~8.5 instead of ~17 ns per number on 2 cores; the price is a longer compile (more fused ops per draw).
    Everywhere else (GPU/TPU, other key implementations or dtypes) it calls ``jax.random.normal``.
    Measured, not adopted in the library: 1.06-1.15x on SIAM calls for 1.5-2x longer compiles.
    """
    shape = tuple(shape)
    if not _fast_path(key, shape, dtype):
        return JAX_NORMAL(key, shape, dtype)
    words = jax.random.key_data(key)
    size = math.prod(shape)
    b0, b1 = _threefry2x32(words[..., 0], words[..., 1], jnp.zeros((size,), jnp.uint32), lax.iota(jnp.uint32, size))
    mantissa = ((b0 ^ b1) >> jnp.uint32(9)) | jnp.uint32(0x3F800000)  # 23 random bits, exponent of 1.0
    floats = lax.bitcast_convert_type(mantissa, jnp.float32) - np.float32(1.0)  # uniform in [0, 1)
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
    u = lax.max(lo, floats * (np.float32(1.0) - lo) + lo)
    return (np.float32(np.sqrt(2.0)) * lax.erf_inv(u)).reshape(shape)
