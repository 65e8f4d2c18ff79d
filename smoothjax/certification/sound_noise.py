"""Sound noise: Gaussian smoothing whose Monte Carlo samples are exact in floating point (Voracek & Hein, ICLR 2023).

Why ``x + sigma * jax.random.normal(...)`` is not sound: Cohen et al.'s theorem is about the Gaussian N(x, sigma^2 I)
and its *translates*. The computed sample is neither: ``jax.random.normal`` maps 23-24 random bits through erfinv
in float32 (a finite, slightly wrong distribution with truncated tails), and the float32 sum ``fl(x + z)`` rounds
differently at different x (the spacing of floats depends on the magnitude), so the distribution actually fed to the
classifier at x' is not the one at x shifted by x' - x. Voracek & Hein (2023, "Sound Randomized Smoothing in
Floating-Point Arithmetic") built classifiers with certificates that adversarial examples violate this way.

The sound construction: inputs are on the 1/255 grid (``x = k / 255`` with integer k, as 8-bit images are) and
the base classifier is taken to be ``h(z) = f(fl32(Q(z)))``, where ``Q`` rounds every coordinate to the nearest
multiple of 1/255 and ``fl32(j / 255)`` is the float32 division of the integer j by 255. ``h`` is a fixed function
on R^d, so Cohen et al.'s theorem for ``G(x) = argmax_c P[h(x + eps) = c]``, ``eps ~ N(0, sigma^2 I)``, holds in exact
arithmetic on all of R^d. For ``x`` on the grid, ``Q(x + eps) = x + Q(eps)`` exactly, and each coordinate of
``255 Q(eps)`` is the integer j with probability ``pi_j = Phi((j + 1/2) / (255 sigma)) - Phi((j - 1/2) / (255
sigma))``. We draw j by inversion on 64 random bits against integer thresholds (rejection for the 2^-64-scale
remainder and the tails beyond ``+-J``), add it to k in int32 and convert once: no rounding depends on x.

The sampled per-coordinate law ``q_j = w_j / W`` (``w_j = floor(2^64 pi_j)``) differs from ``pi`` by at most
``delta`` in total variation (``grid_noise_table(sigma).tv_bound``, about 1e-12 sigma, including the float64 error of
the masses), so over ``d`` coordinates a probability under ``q`` is within ``d * delta`` of the one under ``pi``:
certification subtracts ``d * delta`` from its lower bound (``certification_slack``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

LEVELS = 255  # grid spacing 1 / LEVELS
_TAIL_SIGMAS = 10.0  # the cells cover +-10 sigma; the rest (< 2e-23) is rejected
_MASS_RELATIVE_ERROR = 1e-14  # generous bound on the relative float64 error of scipy's Gaussian tail masses


class GridNoiseTable(NamedTuple):
    """Integer inversion table of the grid noise for one sigma (NumPy arrays).

    Attributes:
      offsets: int32 (N,) grid steps ``j = -J ... J`` (noise value ``j / 255``).
      masses: float64 (N,) Gaussian cell masses ``pi_j``.
      cum_hi, cum_lo: uint32 (N,) high and low words of the 64-bit cumulative weights ``C_j = w_{-J} + ... + w_j``.
      tv_bound: float, an upper bound on the total variation between the sampled law and the exact cell masses
        (per coordinate), including the truncated tails and the float64 error of the masses.
    """

    offsets: np.ndarray
    masses: np.ndarray
    cum_hi: np.ndarray
    cum_lo: np.ndarray
    tv_bound: float


def cell_masses(sigma: float, half_width: int):
    """Exact-as-float64 Gaussian masses of the 1/255 cells ``[(j - 1/2)/255, (j + 1/2)/255]``, ``|j| <= half_width``.

    Returns ``(offsets int32 (N,), masses float64 (N,), tail float64, error float64)``: ``tail`` = the mass outside the
    cells, ``error`` bounds the summed absolute float64 error of the masses and the tail (assuming ``norm.sf`` has
    relative error <= 1e-14). Masses are differences of upper-tail probabilities (``norm.sf``) of |j| so the tails
    keep full relative precision.
    """
    j = np.arange(0, half_width + 1, dtype=np.float64)
    scale = LEVELS * sigma
    sf_lo, sf_hi = scipy.stats.norm.sf((j - 0.5) / scale), scipy.stats.norm.sf((j + 0.5) / scale)
    right = sf_lo - sf_hi
    right[0] = 1.0 - 2.0 * sf_hi[0]
    offsets = np.arange(-half_width, half_width + 1, dtype=np.int32)
    error = _MASS_RELATIVE_ERROR * 2.0 * (np.sum(sf_lo + sf_hi) + sf_hi[-1]) + 1e-16 * (2 * half_width + 2)
    return offsets, np.concatenate([right[:0:-1], right]), 2.0 * sf_hi[-1], error


@functools.lru_cache(maxsize=16)
def grid_noise_table(sigma: float) -> GridNoiseTable:
    """The inversion table for noise level ``sigma`` (pixel units, > 0); see ``GridNoiseTable``."""
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma={sigma!r} is not allowed; sound noise needs a finite sigma > 0 (pixel units)")
    half_width = int(np.ceil(_TAIL_SIGMAS * LEVELS * sigma)) + 1
    offsets, masses, tail, error = cell_masses(sigma, half_width)
    weights = [int(w) for w in np.floor(np.ldexp(masses, 64))]  # exact: floats this large are integers
    cum = np.cumsum(np.array(weights, dtype=object))
    total = int(cum[-1])
    assert total < 2**64
    cum_hi = np.array([int(c) >> 32 for c in cum], np.uint32)
    cum_lo = np.array([int(c) & 0xFFFFFFFF for c in cum], np.uint32)
    sampled = np.array(weights, np.float64) / float(total)
    tv = 0.5 * (np.abs(sampled - masses).sum() + tail + error) + 1e-16 * len(masses)
    return GridNoiseTable(offsets, masses, cum_hi, cum_lo, float(np.nextafter(tv, 1.0)))


def certification_slack(sigma: float, dim: int) -> float:
    """``dim * tv_bound``: how far any probability under the sampled grid noise can be from the exact one."""
    return float(dim * grid_noise_table(float(sigma)).tv_bound)


def _invert(hi, lo, cum_hi, cum_lo):
    """Number of cumulative weights <= the 64-bit value (hi, lo): a branch-free binary search on word pairs."""
    n = cum_hi.shape[0]
    low, high = jnp.zeros(hi.shape, jnp.int32), jnp.full(hi.shape, n, jnp.int32)
    for _ in range(int(np.ceil(np.log2(n + 1)))):
        mid = (low + high) // 2
        c_hi, c_lo = cum_hi[jnp.minimum(mid, n - 1)], cum_lo[jnp.minimum(mid, n - 1)]
        below = (low < high) & ((c_hi < hi) | ((c_hi == hi) & (c_lo <= lo)))
        low, high = jnp.where(below, mid + 1, low), jnp.where(below | (low >= high), high, mid)
    return low


def grid_noise_steps(key, shape, sigma: float) -> jax.Array:
    """i.i.d. grid steps: int32 array of ``shape`` whose entries are j with probability ``q_j`` (see module doc).

    ``q`` is within ``grid_noise_table(sigma).tv_bound`` of the Gaussian cell masses in total variation. Deterministic
    in ``key``; rejected draws (probability ~1e-16 each) are redrawn from ``fold_in(key, round)`` until none is left.
    """
    table = grid_noise_table(float(sigma))
    cum_hi, cum_lo = jnp.asarray(table.cum_hi), jnp.asarray(table.cum_lo)
    n = len(table.offsets)

    def draw(k):
        bits = jax.random.bits(k, tuple(shape) + (2,), jnp.uint32)
        return _invert(bits[..., 0], bits[..., 1], cum_hi, cum_lo)

    index = draw(jax.random.fold_in(key, 0))

    def redraw(state):
        round_, idx = state
        return round_ + 1, jnp.where(idx == n, draw(jax.random.fold_in(key, round_)), idx)

    _, index = jax.lax.while_loop(lambda s: jnp.any(s[1] == n), redraw, (jnp.int32(1), index))
    return index - (n // 2)


def grid_levels(x) -> jax.Array:
    """int32 ``round(255 x)``: the grid levels of images in [0, 1] (exact for 8-bit images stored as k / 255)."""
    return jnp.round(jnp.asarray(x, jnp.float32) * LEVELS).astype(jnp.int32)


def sound_noisy_copies(key, x, first, num: int, sigma: float) -> jax.Array:
    """Copies ``first ... first + num - 1`` of one image's sound noisy stream: float32 ``(num,) + x.shape``.

    Copy m is ``float32(k + j_m) / 255`` with ``k = grid_levels(x)`` and ``j_m = grid_noise_steps(fold_in(key, m),
    x.shape, sigma)``, as XLA computes it (possibly a multiply by the reciprocal: within one ulp of the exact
    quotient). The integer sum is converted once, so each copy is a fixed function of the integer grid point
    ``x + Q(eps)`` (no clipping, like the Gaussian path), and copy m does not depend on how the stream is chunked.
    """
    index = first + jnp.arange(num, dtype=jnp.int32)
    steps = jax.vmap(lambda m: grid_noise_steps(jax.random.fold_in(key, m), tuple(x.shape), sigma))(index)
    return (grid_levels(x)[None] + steps).astype(jnp.float32) / jnp.float32(LEVELS)


def check_on_grid(x) -> None:
    """Raises a one-line ValueError when a concrete ``x`` is not on the 1/255 grid (no-op for tracers)."""
    try:
        values = np.asarray(x, np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    err = np.abs(values * LEVELS - np.round(values * LEVELS))
    if values.size and err.max() > 1e-3:
        raise ValueError(f"x has a value {values.flat[int(err.argmax())]!r} off the 1/255 grid; sound=True needs "
                         "8-bit images k / 255")
