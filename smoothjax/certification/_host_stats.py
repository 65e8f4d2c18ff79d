"""Float64 statistics on the host, behind every certificate: bounds, p-values and radii rounded to the safe side.

JAX has no ``betaincinv`` and float32 ``betainc`` is far off for large ``n``, so every probability of this package is
computed on the host in float64 with SciPy through ``jax.pure_callback`` (``callback``) and rounded towards the safe
side to float32: bounds and radii *down*, p-values *up*. The integer searches (``first_true``, ``bisect``) and the
margins that absorb float64 rounding in the sequential tests (``LOG_MARGIN``, ``LEVEL_FACTOR``) live here too, so
Cohen's CERTIFY, the confidence sequences, the grid tests and the randomized bound share one definition of each.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

LOG_MARGIN = 1e-8  # nats added to log(1/alpha) before a test rejects (absorbs float64 rounding)
LEVEL_FACTOR = 1.0 - 1e-9  # tests at level alpha reject at a level this much below it
_BISECTIONS = 64


# ----------------------------------------------------------------------------------------------- validation
def concrete(x):
    """``np.asarray(x)``, or None when ``x`` is a tracer (so checks on values run only outside jit)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_counts(n_a, n, what: str, min_n: int = 1) -> None:
    """One-line ValueError naming ``what`` unless concrete counts are integers with 0 <= k <= n, n >= min_n."""
    a, t = concrete(n_a), concrete(n)
    if a is None or t is None:
        return
    a, t = np.broadcast_arrays(a, t)
    bad = (a < 0) | (a > t) | (t < min_n) | (a != np.round(a)) | (t != np.round(t))
    if np.any(bad):
        i = np.flatnonzero(bad)[0]
        raise ValueError(f"{what}: (k={a.flat[i]!r}, n={t.flat[i]!r}) is not allowed; "
                         f"need integers 0 <= k <= n, n >= {min_n}")


# -------------------------------------------------------------------------------------------------- rounding
def round_down_f32(v64: np.ndarray) -> np.ndarray:
    """Largest float32 <= v64 (NaN stays NaN)."""
    v32 = v64.astype(np.float32)
    return np.where(v32.astype(np.float64) > v64, np.nextafter(v32, np.float32(-np.inf)), v32)


def round_up_f32(v64: np.ndarray) -> np.ndarray:
    """Smallest float32 >= v64 (NaN stays NaN)."""
    v32 = v64.astype(np.float32)
    return np.where(v32.astype(np.float64) < v64, np.nextafter(v32, np.float32(np.inf)), v32)


# ------------------------------------------------------------------------------------------ float64 statistics
def lower_bound64(n_a, n, alpha: float) -> np.ndarray:
    """Clopper-Pearson one-sided lower bound Beta^-1(alpha; n_a, n - n_a + 1) in float64; 0 at n_a = 0."""
    a, t = np.broadcast_arrays(np.asarray(n_a, np.float64), np.asarray(n, np.float64))
    valid = (a >= 0) & (a <= t) & (t >= 1)
    safe_a, safe_t = np.where(valid & (a > 0), a, 1.0), np.where(valid, t, 1.0)
    p = scipy.stats.beta.ppf(alpha, safe_a, safe_t - safe_a + 1.0)
    return np.where(valid, np.where(a > 0, p, 0.0), np.nan)


def pvalue64(k, n) -> np.ndarray:
    """Two-sided binomial test p-value at 1/2: min(1, 2 * BinomCDF(min(k, n - k); n, 1/2)), float64."""
    k, n = np.broadcast_arrays(np.asarray(k, np.float64), np.asarray(n, np.float64))
    valid = (k >= 0) & (k <= n) & (n >= 0)
    tail = scipy.stats.binom.cdf(np.minimum(k, n - k), n, 0.5)
    return np.where(valid, np.minimum(1.0, 2.0 * tail), np.nan)


def decide(p64, sigma: float):
    """``(bound, radius, abstain)`` from float64 lower bounds ``p64``: abstain iff not ``p64 >= 1/2`` (NaN
    abstains), else radius ``sigma * Phi^-1(p64)`` (``inf`` at 1); both rounded down to float32, radius 0 when
    abstaining."""
    abstain = ~(p64 >= 0.5)
    with np.errstate(divide="ignore"):
        radius64 = sigma * scipy.stats.norm.ppf(np.where(abstain, 0.5, p64))
    radius = np.where(abstain, np.float32(0), round_down_f32(radius64))
    return round_down_f32(p64), radius.astype(np.float32), abstain


# ---------------------------------------------------------------------------------------- alpha as an operand
def alpha_operand(alpha) -> tuple[jax.Array, jax.Array]:
    """``alpha`` as the two int32 words (low, high) of its float64 bits, an operand of the host callbacks.

    Passing alpha as an operand rather than baking it into the callback means a new alpha never recompiles, and the
    words carry it exactly: a concrete alpha (Python float or array) arrives on the host as the same float64. A
    traced alpha (float32 under the caller's jit) is widened exactly to float64 in-graph (normal float32 values;
    zero and subnormals become 0, which the host treats as invalid). Values outside (0, 1) give NaN bounds and
    abstentions under jit (``check_alpha`` rejects them outside it).
    """
    a = concrete(alpha)
    if a is not None:
        words = np.asarray(a, np.float64).reshape(()).reshape(1).view(np.int32)  # little-endian: low, high
        return jnp.int32(words[0]), jnp.int32(words[1])
    bits = jax.lax.bitcast_convert_type(jnp.asarray(alpha, jnp.float32), jnp.uint32)
    sign, exponent, mantissa = bits >> 31, (bits >> 23) & 0xFF, bits & 0x7FFFFF
    normal = (exponent != 0) & (exponent != 0xFF)
    high = jnp.where(normal, (sign << 31) | ((exponent + (1023 - 127)) << 20) | (mantissa >> 3), 0)
    low = jnp.where(normal, (mantissa & 7) << 29, 0)
    to_int32 = lambda w: jax.lax.bitcast_convert_type(w.astype(jnp.uint32), jnp.int32)  # noqa: E731
    return to_int32(low), to_int32(high)


def alpha_of(low, high) -> np.ndarray:
    """The float64 alpha of ``alpha_operand``'s words (elementwise); NaN where it is not in (0, 1)."""
    words = (np.asarray(high, np.int64) & 0xFFFFFFFF) << 32 | (np.asarray(low, np.int64) & 0xFFFFFFFF)
    alpha = np.asarray(words, np.int64).view(np.float64)
    return np.where((alpha > 0) & (alpha < 1), alpha, np.nan)


def host_lower_bound(n_a, n, alpha_low, alpha_high):
    return round_down_f32(lower_bound64(n_a, n, alpha_of(alpha_low, alpha_high)))


def host_pvalue(k, n):
    return round_up_f32(pvalue64(k, n))


def host_radius(p, *, sigma):
    return round_down_f32(sigma * scipy.stats.norm.ppf(np.asarray(p, np.float64)))


def host_certify(n_a, n, alpha_low, alpha_high, *, sigma, slack=0.0):
    return decide(lower_bound64(n_a, n, alpha_of(alpha_low, alpha_high)) - slack, sigma)


def host_predict_abstains(n_a, n, alpha_low, alpha_high):
    return ~(pvalue64(n_a, n) <= alpha_of(alpha_low, alpha_high))


def callback(host_fn, out_dtypes, *args):
    """Elementwise float64 host computation over broadcast int32 arguments; jit- and vmap-safe.

    In a sharded jit the callback runs once, on device 0, on the gathered per-image values (B numbers)."""
    args = jnp.broadcast_arrays(*(jnp.asarray(a).astype(jnp.int32) for a in args))
    out = tuple(jax.ShapeDtypeStruct(args[0].shape, d) for d in out_dtypes)

    def host(*a):
        r = host_fn(*a)
        return tuple(np.asarray(v) for v in (r if isinstance(r, tuple) else (r,)))
    return jax.pure_callback(host, out, *args, vmap_method="expand_dims")


# --------------------------------------------------------------------------------------------------- searches
def bisect(excluded, lo, hi):
    """Boundary of the excluded region: ``excluded(lo)`` holds and ``excluded(hi)`` does not; returns (lo, hi)
    after 64 halvings (float64 arrays)."""
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        ex = excluded(mid)
        lo, hi = np.where(ex, mid, lo), np.where(ex, hi, mid)
    return lo, hi


def first_true(pred, lo, hi):
    """Smallest integer s in [lo, hi] with pred(s), for pred monotone (False...True) on [lo, hi]; hi + 1 if none."""
    lo = np.asarray(lo, np.int64) + np.zeros(np.shape(hi), np.int64)
    top = np.asarray(hi, np.int64) + np.zeros(lo.shape, np.int64)
    hi = top + 1
    while np.any(lo < hi):
        active = lo < hi
        mid = np.minimum((lo + hi) // 2, top)
        ok = pred(mid)
        lo, hi = np.where(active & ~ok, mid + 1, lo), np.where(active & ok, mid, hi)
    return lo
