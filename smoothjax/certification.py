"""Monte Carlo certification and prediction of a Gaussian-smoothed classifier (Cohen et al. 2019).

The smoothed classifier is ``g(x) = argmax_c P[f(x + eps) = c]`` with ``eps ~ N(0, sigma^2 I)`` in *pixel units*
(images in [0, 1]; noisy images are not clipped, as in the reference code). This module implements, exactly:

* CERTIFY: guess ``c_A`` from ``n0`` noise draws, count ``n_A`` hits of ``c_A`` in ``n`` fresh draws, take the
  one-sided (1 - alpha) Clopper-Pearson lower bound ``p_A`` of ``P[f(x + eps) = c_A]`` and abstain iff
  ``p_A < 1/2``, else certify ``c_A`` with L2 radius ``sigma * Phi^-1(p_A)``. With probability >= 1 - alpha over
  the noise, a returned certificate is correct: ``g`` predicts ``c_A`` on the whole L2 ball of that radius.
* PREDICT: from ``n`` draws, the top two counts ``n_A, n_B``; abstain iff the two-sided binomial test of
  ``n_A`` in ``n_A + n_B`` at 1/2 has p-value > alpha. A non-abstaining answer differs from ``g(x)`` with
  probability <= alpha.

The probabilities are computed on the host in float64 with SciPy through ``jax.pure_callback`` (JAX has no
``betaincinv`` and float32 ``betainc`` is far off for large ``n``), then rounded towards the safe side to float32:
bounds and radii *down*, p-values *up*. Everything here is jittable (``sigma``, ``alpha``, ``num``,
``batch_size``, ``num_classes`` and ``apply_fn`` are static) and vmappable. Sampling is ``vmap``-ed over images, so
a batch sharded over a mesh axis stays sharded; the noise of image ``i`` depends only on its own key, and the
random bits do not depend on sharding (``jax_threefry_partitionable``), so counts are the same on 1 or many devices.
In a sharded jit the small host callbacks run once, on device 0, on the gathered per-image counts (B values).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from smoothjax import sound_noise
from smoothjax.noise import check_sigma, gaussian_noise

_INT32_MAX = 2**31 - 1


class Certificate(NamedTuple):
    """Result of CERTIFY for one image (scalars) or a batch (each field of shape (B,)).

    Attributes:
      prediction: int32 certified class, -1 when abstaining.
      radius: float32 certified L2 radius in pixel units (images in [0, 1]); 0 when abstaining. Rounded down.
      p_a_lower: float32 (1 - alpha) lower confidence bound on P[f(x + eps) = guess]; rounded down.
      count: int32 ``n_A``, the hits of ``guess`` among the ``n`` estimation draws.
      guess: int32 ``c_A``, the argmax of the selection counts (reported even when abstaining).
    """

    prediction: jax.Array
    radius: jax.Array
    p_a_lower: jax.Array
    count: jax.Array
    guess: jax.Array


# ----------------------------------------------------------------------------------------------- validation
def _check_alpha(alpha) -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha={alpha!r} is not allowed; alpha must be a Python float in (0, 1) (static)") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"alpha={alpha!r} is not allowed; alpha must be a Python float in (0, 1)")
    return value


def _check_positive_sigma(sigma) -> float:
    value = check_sigma(sigma)
    if value <= 0.0:
        raise ValueError(f"sigma={sigma!r} is not allowed; certification needs sigma > 0 (pixel units)")
    return value


def _check_int(name: str, value, low: int) -> int:
    try:
        ok = not isinstance(value, bool) and int(value) == value and low <= int(value) <= _INT32_MAX // 2
    except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
        ok = False
    if not ok:
        raise ValueError(f"{name}={value!r} is not allowed; it must be a Python int in [{low}, {_INT32_MAX // 2}]")
    return int(value)


def _concrete(x):
    """``np.asarray(x)``, or None when ``x`` is a tracer (so checks on values run only outside jit)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_counts(n_a, n, what: str, min_n: int = 1) -> None:
    a, t = _concrete(n_a), _concrete(n)
    if a is None or t is None:
        return
    a, t = np.broadcast_arrays(a, t)
    bad = (a < 0) | (a > t) | (t < min_n) | (a != np.round(a)) | (t != np.round(t))
    if np.any(bad):
        i = np.flatnonzero(bad)[0]
        raise ValueError(f"{what}: (k={a.flat[i]!r}, n={t.flat[i]!r}) is not allowed; "
                         f"need integers 0 <= k <= n, n >= {min_n}")


# ----------------------------------------------------------------------------------------- host (float64) side
def _round_down_f32(v64: np.ndarray) -> np.ndarray:
    """Largest float32 <= v64 (NaN stays NaN)."""
    v32 = v64.astype(np.float32)
    return np.where(v32.astype(np.float64) > v64, np.nextafter(v32, np.float32(-np.inf)), v32)


def _round_up_f32(v64: np.ndarray) -> np.ndarray:
    """Smallest float32 >= v64 (NaN stays NaN)."""
    v32 = v64.astype(np.float32)
    return np.where(v32.astype(np.float64) < v64, np.nextafter(v32, np.float32(np.inf)), v32)


def _lower_bound64(n_a, n, alpha: float) -> np.ndarray:
    """Clopper-Pearson one-sided lower bound Beta^-1(alpha; n_a, n - n_a + 1) in float64; 0 at n_a = 0."""
    a, t = np.broadcast_arrays(np.asarray(n_a, np.float64), np.asarray(n, np.float64))
    valid = (a >= 0) & (a <= t) & (t >= 1)
    safe_a, safe_t = np.where(valid & (a > 0), a, 1.0), np.where(valid, t, 1.0)
    p = scipy.stats.beta.ppf(alpha, safe_a, safe_t - safe_a + 1.0)
    return np.where(valid, np.where(a > 0, p, 0.0), np.nan)


def _pvalue64(k, n) -> np.ndarray:
    """Two-sided binomial test p-value at 1/2: min(1, 2 * BinomCDF(min(k, n - k); n, 1/2)), float64."""
    k, n = np.broadcast_arrays(np.asarray(k, np.float64), np.asarray(n, np.float64))
    valid = (k >= 0) & (k <= n) & (n >= 0)
    tail = scipy.stats.binom.cdf(np.minimum(k, n - k), n, 0.5)
    return np.where(valid, np.minimum(1.0, 2.0 * tail), np.nan)


def _host_lower_bound(n_a, n, *, alpha):
    return _round_down_f32(_lower_bound64(n_a, n, alpha))


def _host_pvalue(k, n):
    return _round_up_f32(_pvalue64(k, n))


def _host_radius(p, *, sigma):
    return _round_down_f32(sigma * scipy.stats.norm.ppf(np.asarray(p, np.float64)))


def _host_certify(n_a, n, *, alpha, sigma, slack=0.0):
    p64 = _lower_bound64(n_a, n, alpha) - slack
    abstain = ~(p64 >= 0.5)  # NaN (invalid counts) abstains too.
    radius64 = sigma * scipy.stats.norm.ppf(np.where(abstain, 0.5, p64))
    radius = np.where(abstain, np.float32(0), _round_down_f32(radius64))
    return _round_down_f32(p64), radius.astype(np.float32), abstain


def _host_predict_abstains(n_a, n, *, alpha):
    return ~(_pvalue64(n_a, n) <= alpha)


def _callback(host_fn, out_dtypes, *args):
    """Elementwise float64 host computation over broadcast int32 arguments; jit- and vmap-safe."""
    args = jnp.broadcast_arrays(*(jnp.asarray(a).astype(jnp.int32) for a in args))
    out = tuple(jax.ShapeDtypeStruct(args[0].shape, d) for d in out_dtypes)

    def host(*a):
        r = host_fn(*a)
        return tuple(np.asarray(v) for v in (r if isinstance(r, tuple) else (r,)))
    return jax.pure_callback(host, out, *args, vmap_method="expand_dims")


# ---------------------------------------------------------------------------------------------- statistics
def lower_confidence_bound(n_a, n, alpha: float) -> jax.Array:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial proportion.

    Args:
      n_a: int, successes; scalar or array, broadcast against ``n``.
      n: int, trials (1 <= n, 0 <= n_a <= n; n up to 1e7 and beyond, int32 range).
      alpha: Python float in (0, 1), static.

    Returns:
      float32 array of the broadcast shape: ``Beta^-1(alpha; n_a, n - n_a + 1)`` (0 when ``n_a = 0``), computed
      in float64 by ``scipy.stats.beta.ppf`` on the host and rounded *down* to float32, so it is never above the
      float64 value (sound) and within one float32 ulp (< 6e-8) of it. P[p <= bound] <= alpha for every true p.
      Invalid counts give NaN under jit and a ValueError outside it.
    """
    alpha = _check_alpha(alpha)
    _check_counts(n_a, n, "lower_confidence_bound")
    return _callback(functools.partial(_host_lower_bound, alpha=alpha), (jnp.float32,), n_a, n)[0]


def binomial_test_pvalue(k, n) -> jax.Array:
    """Two-sided exact binomial test p-value of ``k`` successes in ``n`` trials against p = 1/2.

    Args:
      k, n: ints (0 <= k <= n), scalars or arrays, broadcast together.

    Returns:
      float32 array of the broadcast shape equal to ``scipy.stats.binomtest(k, n, 0.5).pvalue``, i.e.
      ``min(1, 2 * BinomCDF(min(k, n - k); n, 1/2))``, computed in float64 and rounded *up* to float32 (so
      ``pvalue <= alpha`` in float32 implies it in float64). Invalid counts give NaN under jit, ValueError outside.
    """
    _check_counts(k, n, "binomial_test_pvalue", min_n=0)
    return _callback(_host_pvalue, (jnp.float32,), k, n)[0]


def certified_radius(p_a_lower, sigma: float) -> jax.Array:
    """L2 certified radius ``sigma * Phi^-1(p_a_lower)`` of Cohen et al. (2019), Theorem 1 with p_B = 1 - p_A.

    Args:
      p_a_lower: float array in [0, 1], any shape: a lower bound on the top-class probability.
      sigma: noise level in pixel units (images in [0, 1]), Python float > 0, static.

    Returns:
      float32 array of the same shape, in pixel L2 units: computed in float64 with ``scipy.stats.norm.ppf`` from the
      float32 input and rounded down (never above the float64 value, within 1 ulp of it). Negative when
      ``p_a_lower < 1/2`` (no certificate). Note: ``certify`` computes its radius from the float64 bound, which is
      more precise near p = 1 than re-deriving it from the float32 ``Certificate.p_a_lower``.
    """
    sigma = _check_positive_sigma(sigma)
    p = jnp.asarray(p_a_lower, jnp.float32)
    return jax.pure_callback(functools.partial(_host_radius, sigma=sigma), jax.ShapeDtypeStruct(p.shape, jnp.float32),
                             p, vmap_method="expand_dims")


# ----------------------------------------------------------------------------------------- decisions from counts
def certify_from_counts(counts_selection, counts_estimation, *, sigma: float, alpha: float,
                        slack: float = 0.0) -> Certificate:
    """CERTIFY's decision from class counts (no model): guess, lower bound, abstention and radius.

    Args:
      counts_selection: int (..., K) counts from the n0 selection draws; ``c_A`` = their argmax (first on ties).
      counts_estimation: int (..., K) counts from the independent n estimation draws; n = their sum.
      sigma: noise level in pixel units, Python float > 0 (static).
      alpha: Python float in (0, 1) (static).
      slack: subtracted from the float64 lower bound first (sound noise: ``sound_noise.certification_slack``).

    Returns:
      ``Certificate`` with fields of shape (...): abstain (prediction -1, radius 0) iff the (1 - alpha) lower
      bound on p_A is < 1/2, else prediction ``c_A`` and radius ``sigma * Phi^-1(p_a_lower)`` from the float64
      bound, rounded down. If the two count sets come from independent noise, the certificate is wrong with
      probability <= alpha.
    """
    sigma, alpha = _check_positive_sigma(sigma), _check_alpha(alpha)
    sel, est = jnp.asarray(counts_selection), jnp.asarray(counts_estimation)
    if sel.ndim < 1 or sel.shape != est.shape:
        raise ValueError(f"counts shapes {sel.shape} and {est.shape} are not allowed; need equal shapes (..., K)")
    guess = jnp.argmax(sel, axis=-1).astype(jnp.int32)
    count = jnp.take_along_axis(est, guess[..., None], axis=-1)[..., 0].astype(jnp.int32)
    total = jnp.sum(est, axis=-1, dtype=jnp.int32)
    p_lower, radius, abstain = _callback(functools.partial(_host_certify, alpha=alpha, sigma=sigma, slack=slack),
                                         (jnp.float32, jnp.float32, jnp.bool_), count, total)
    prediction = jnp.where(abstain, jnp.int32(-1), guess)
    return Certificate(prediction, radius, p_lower, count, guess)


def predict_from_counts(counts, alpha: float) -> jax.Array:
    """PREDICT's decision from class counts (no model).

    Args:
      counts: int (..., K) counts from n noise draws, K >= 2.
      alpha: Python float in (0, 1) (static).

    Returns:
      int32 (...): the top class, or -1 (abstain) iff the two-sided binomial test of the top count n_A in
      n_A + n_B (n_B the runner-up count) at p = 1/2 has p-value > alpha; decided on the float64 p-value. A
      non-abstaining answer differs from the smoothed classifier's prediction with probability <= alpha.
    """
    alpha = _check_alpha(alpha)
    counts = jnp.asarray(counts)
    if counts.ndim < 1 or counts.shape[-1] < 2:
        raise ValueError(f"counts shape {counts.shape} is not allowed; need (..., K) with K >= 2")
    top, idx = jax.lax.top_k(counts.astype(jnp.int32), 2)
    abstain = _callback(functools.partial(_host_predict_abstains, alpha=alpha), (jnp.bool_,),
                        top[..., 0], top[..., 0] + top[..., 1])[0]
    return jnp.where(abstain, jnp.int32(-1), idx[..., 0].astype(jnp.int32))


# ------------------------------------------------------------------------------------------------ sampling
def _as_keys(key, x):
    """Typed keys: shape () for one image (H, W, C), shape (B,) for a batch (B, H, W, C)."""
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


def _chunk_counts(key, i, x, apply_fn, variables, sigma, chunk, num, num_classes, sound=False):
    """Class counts (K,) of draws ``i * chunk ... i * chunk + chunk - 1`` of image x's stream (key); draws >= num
    are masked. Draw j of the stream is the same whatever ``num``, so streams of different lengths share prefixes."""
    noisy = (sound_noise.sound_noisy_copies(key, x, i * chunk, chunk, sigma) if sound
             else x[None] + gaussian_noise(jax.random.fold_in(key, i), (chunk,) + x.shape, sigma, x.dtype))
    logits = apply_fn(variables, noisy)
    if logits.shape != (chunk, num_classes):
        raise ValueError(f"apply_fn output shape {logits.shape} is not allowed; need (batch, {num_classes})")
    pred = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    valid = i * chunk + jnp.arange(chunk, dtype=jnp.int32) < num
    hits = (pred[:, None] == jnp.arange(num_classes, dtype=jnp.int32)[None, :]) & valid[:, None]
    return jnp.sum(hits, axis=0, dtype=jnp.int32)


def _counts_one(key, x, apply_fn, variables, sigma, num, batch_size, num_classes, sound=False):
    chunk = min(batch_size, num)
    body = lambda i, c: c + _chunk_counts(key, i, x, apply_fn, variables, sigma, chunk, num, num_classes, sound)
    return jax.lax.fori_loop(0, -(-num // chunk), body, jnp.zeros((num_classes,), jnp.int32))


def sample_counts(key, apply_fn: Callable, variables, x, *, sigma: float, num: int, batch_size: int,
                  num_classes: int, sound: bool = False) -> jax.Array:
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
      sound: static; draw ``smoothjax.sound_noise`` grid noise (x on the 1/255 grid) instead of float Gaussian noise.

    Returns:
      int32 counts (K,) for one image or (B, K) for a batch, each row summing to ``num``. Row i depends only on
      image i and its key: it equals ``sample_counts(keys[i], ..., x[i], ...)``, whatever the batching or sharding.
    """
    sigma = check_sigma(sigma)
    num, batch_size = _check_int("num", num, 1), _check_int("batch_size", batch_size, 1)
    num_classes = _check_int("num_classes", num_classes, 2)
    x = jnp.asarray(x)
    keys = _as_keys(key, x)
    if sound:
        sound_noise.check_on_grid(x)
    one = functools.partial(_counts_one, apply_fn=apply_fn, variables=variables, sigma=sigma, num=num,
                            batch_size=batch_size, num_classes=num_classes, sound=bool(sound))
    return one(keys, x) if x.ndim == 3 else jax.vmap(one)(keys, x)


def certify(key, apply_fn: Callable, variables, x, *, sigma: float, n0: int = 100, n: int = 100_000,
            alpha: float = 0.001, batch_size: int = 1000, num_classes: int, sound: bool = False) -> Certificate:
    """CERTIFY (Cohen et al. 2019, Algorithm 1) for one image or a batch.

    Each image's key is split into a selection key (``n0`` draws, guess ``c_A``) and an independent estimation
    key (``n`` draws, count ``n_A``); see ``certify_from_counts`` for the decision. Keys, shapes, units and static
    arguments follow ``sample_counts``.

    Returns:
      ``Certificate`` of scalars (one image) or of (B,) arrays. Guarantee: with probability >= 1 - alpha over the
      noise, a non-abstaining certificate is right: the smoothed classifier predicts ``prediction`` at every
      point within L2 distance ``radius`` (pixel units) of x. ``sound=True``: the same, in floating point, for the
      smoothed ``f(fl32(Q(z)))`` of ``smoothjax.sound_noise`` (bound lowered by its ``certification_slack``).
    """
    sigma, alpha = _check_positive_sigma(sigma), _check_alpha(alpha)
    n0, n = _check_int("n0", n0, 1), _check_int("n", n, 1)
    x = jnp.asarray(x)
    keys = _as_keys(key, x)
    split = jax.vmap(jax.random.split)(keys) if keys.ndim else jax.random.split(keys)
    common = dict(sigma=sigma, batch_size=batch_size, num_classes=num_classes, sound=sound)
    counts0 = sample_counts(split[..., 0], apply_fn, variables, x, num=n0, **common)
    counts = sample_counts(split[..., 1], apply_fn, variables, x, num=n, **common)
    slack = sound_noise.certification_slack(sigma, x[0].size if x.ndim == 4 else x.size) if sound else 0.0
    return certify_from_counts(counts0, counts, sigma=sigma, alpha=alpha, slack=slack)


def predict(key, apply_fn: Callable, variables, x, *, sigma: float, n: int, alpha: float, batch_size: int,
            num_classes: int, sound: bool = False) -> jax.Array:
    """PREDICT (Cohen et al. 2019, Algorithm 2) for one image or a batch.

    Draws ``n`` noisy copies per image (keys, shapes, units and static arguments as in ``sample_counts``) and
    decides with ``predict_from_counts``.

    Returns:
      int32 class per image (scalar or (B,)), -1 to abstain. Guarantee: a non-abstaining answer differs from the
      smoothed classifier's prediction g(x) with probability <= alpha (+ n * certification_slack if ``sound``).
    """
    alpha, n = _check_alpha(alpha), _check_int("n", n, 1)
    counts = sample_counts(key, apply_fn, variables, x, sigma=sigma, num=n, batch_size=batch_size,
                           num_classes=num_classes, sound=sound)
    return predict_from_counts(counts, alpha)


def __getattr__(name):  # ``certify_sequential`` / ``certify_randomized`` live in their own modules (lazy imports).
    if name in ("certify_sequential", "certify_randomized"):
        from smoothjax import randomized_certification, sequential
        return getattr(sequential if name == "certify_sequential" else randomized_certification, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
