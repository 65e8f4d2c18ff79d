"""CERTIFY and PREDICT of a Gaussian-smoothed classifier (Cohen et al. 2019), and their statistics.

The smoothed classifier is ``g(x) = argmax_c P[f(x + eps) = c]`` with ``eps ~ N(0, sigma^2 I)`` in *pixel units*
(images in [0, 1]; noisy images are not clipped, as in the reference code). This module implements, exactly:

* CERTIFY: guess ``c_A`` from ``n0`` noise draws, count ``n_A`` hits of ``c_A`` in ``n`` fresh draws, take the
  one-sided (1 - alpha) Clopper-Pearson lower bound ``p_A`` of ``P[f(x + eps) = c_A]`` and abstain iff
  ``p_A < 1/2``, else certify ``c_A`` with L2 radius ``sigma * Phi^-1(p_A)``. With probability >= 1 - alpha over
  the noise, a returned certificate is correct: ``g`` predicts ``c_A`` on the whole L2 ball of that radius.
* PREDICT: from ``n`` draws, the top two counts ``n_A, n_B``; abstain iff the two-sided binomial test of
  ``n_A`` in ``n_A + n_B`` at 1/2 has p-value > alpha. A non-abstaining answer differs from ``g(x)`` with
  probability <= alpha.

The probabilities are computed on the host in float64 (``_host_stats``), then rounded towards the safe side to
float32: bounds and radii *down*, p-values *up*. Everything here is jittable (``sigma``, ``num``, ``batch_size``,
``num_classes`` and ``apply_fn`` are static; ``alpha`` may be traced: it reaches the host as an operand, so a new
alpha never recompiles) and vmappable; the counts come from ``_sampling``, whose
draws do not depend on batching, sharding or device count.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from smoothjax import parallel
from smoothjax.certification import _host_stats as H
from smoothjax.certification._sampling import (as_keys, certify_counts, check_alpha_or_traced, check_int,
                                               check_positive_sigma, sample_counts, sound_noise)

ABSTAIN = -1  # the prediction of an abstaining certificate or PREDICT


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


# ---------------------------------------------------------------------------------------------- statistics
def lower_confidence_bound(n_a, n, alpha: float) -> jax.Array:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial proportion.

    Args:
      n_a: int, successes; scalar or array, broadcast against ``n``.
      n: int, trials (1 <= n, 0 <= n_a <= n; n up to 1e7 and beyond, int32 range).
      alpha: in (0, 1): a Python float, or a traced scalar (float32; a new value does not recompile).

    Returns:
      float32 array of the broadcast shape: ``Beta^-1(alpha; n_a, n - n_a + 1)`` (0 when ``n_a = 0``), computed
      in float64 by ``scipy.stats.beta.ppf`` on the host and rounded *down* to float32, so it is never above the
      float64 value (sound) and within one float32 ulp (< 6e-8) of it. P[p <= bound] <= alpha for every true p.
      Invalid counts give NaN under jit and a ValueError outside it.
    """
    alpha = check_alpha_or_traced(alpha)
    H.check_counts(n_a, n, "lower_confidence_bound")
    return H.callback(H.host_lower_bound, (jnp.float32,), n_a, n, *H.alpha_operand(alpha))[0]


def binomial_test_pvalue(k, n) -> jax.Array:
    """Two-sided exact binomial test p-value of ``k`` successes in ``n`` trials against p = 1/2.

    Args:
      k, n: ints (0 <= k <= n), scalars or arrays, broadcast together.

    Returns:
      float32 array of the broadcast shape equal to ``scipy.stats.binomtest(k, n, 0.5).pvalue``, i.e.
      ``min(1, 2 * BinomCDF(min(k, n - k); n, 1/2))``, computed in float64 and rounded *up* to float32 (so
      ``pvalue <= alpha`` in float32 implies it in float64). Invalid counts give NaN under jit, ValueError outside.
    """
    H.check_counts(k, n, "binomial_test_pvalue", min_n=0)
    return H.callback(H.host_pvalue, (jnp.float32,), k, n)[0]


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
    sigma = check_positive_sigma(sigma)
    p = jnp.asarray(p_a_lower, jnp.float32)
    return jax.pure_callback(functools.partial(H.host_radius, sigma=sigma), jax.ShapeDtypeStruct(p.shape, jnp.float32),
                             p, vmap_method="expand_dims")


# ----------------------------------------------------------------------------------------- decisions from counts
def certify_from_counts(counts_selection, counts_estimation, *, sigma: float, alpha: float,
                        slack: float = 0.0) -> Certificate:
    """CERTIFY's decision from class counts (no model): guess, lower bound, abstention and radius.

    Args:
      counts_selection: int (..., K) counts from the n0 selection draws; ``c_A`` = their argmax (first on ties).
      counts_estimation: int (..., K) counts from the independent n estimation draws; n = their sum.
      sigma: noise level in pixel units, Python float > 0 (static).
      alpha: in (0, 1), a Python float or a traced scalar (a new value does not recompile).
      slack: subtracted from the float64 lower bound first (sound noise: ``sound_noise.certification_slack``).

    Returns:
      ``Certificate`` with fields of shape (...): abstain (prediction -1, radius 0) iff the (1 - alpha) lower
      bound on p_A is < 1/2, else prediction ``c_A`` and radius ``sigma * Phi^-1(p_a_lower)`` from the float64
      bound, rounded down. If the two count sets come from independent noise, the certificate is wrong with
      probability <= alpha.
    """
    sigma, alpha = check_positive_sigma(sigma), check_alpha_or_traced(alpha)
    sel, est = jnp.asarray(counts_selection), jnp.asarray(counts_estimation)
    if sel.ndim < 1 or sel.shape != est.shape:
        raise ValueError(f"counts shapes {sel.shape} and {est.shape} are not allowed; need equal shapes (..., K)")
    return _certify_decision(sel, est, sigma, H.alpha_operand(alpha), slack)


def _certify_decision(sel, est, sigma: float, alpha_words, slack: float) -> Certificate:
    guess = jnp.argmax(sel, axis=-1).astype(jnp.int32)
    count = jnp.take_along_axis(est, guess[..., None], axis=-1)[..., 0].astype(jnp.int32)
    total = jnp.sum(est, axis=-1, dtype=jnp.int32)
    p_lower, radius, abstain = H.callback(functools.partial(H.host_certify, sigma=sigma, slack=slack),
                                         (jnp.float32, jnp.float32, jnp.bool_), count, total, *alpha_words)
    prediction = jnp.where(abstain, jnp.int32(ABSTAIN), guess)
    return Certificate(prediction, radius, p_lower, count, guess)


def predict_from_counts(counts, alpha: float) -> jax.Array:
    """PREDICT's decision from class counts (no model).

    Args:
      counts: int (..., K) counts from n noise draws, K >= 2.
      alpha: in (0, 1), a Python float or a traced scalar (a new value does not recompile).

    Returns:
      int32 (...): the top class, or -1 (abstain) iff the two-sided binomial test of the top count n_A in
      n_A + n_B (n_B the runner-up count) at p = 1/2 has p-value > alpha; decided on the float64 p-value. A
      non-abstaining answer differs from the smoothed classifier's prediction with probability <= alpha.
    """
    alpha = check_alpha_or_traced(alpha)
    counts = jnp.asarray(counts)
    if counts.ndim < 1 or counts.shape[-1] < 2:
        raise ValueError(f"counts shape {counts.shape} is not allowed; need (..., K) with K >= 2")
    return _predict_decision(counts, H.alpha_operand(alpha))


def _predict_decision(counts, alpha_words) -> jax.Array:
    top, idx = jax.lax.top_k(counts.astype(jnp.int32), 2)
    abstain = H.callback(H.host_predict_abstains, (jnp.bool_,), top[..., 0], top[..., 0] + top[..., 1], *alpha_words)[0]
    return jnp.where(abstain, jnp.int32(ABSTAIN), idx[..., 0].astype(jnp.int32))


def certify(key, apply_fn: Callable, variables, x, *, sigma: float, n0: int = 100, n: int = 100_000,
            alpha: float = 0.001, batch_size: int = 1000, num_classes: int, sound: bool = False,
            batch_axis=None) -> Certificate:
    """CERTIFY (Cohen et al. 2019, Algorithm 1) for one image or a batch.

    Each image's key is split into a selection key (``n0`` draws, guess ``c_A``) and an independent estimation
    key (``n`` draws, count ``n_A``); see ``certify_from_counts`` for the decision. Keys, shapes, units and static
    arguments (``batch_axis`` included) follow ``sample_counts``.

    Returns:
      ``Certificate`` of scalars (one image) or of (B,) arrays. Guarantee: with probability >= 1 - alpha over the
      noise, a non-abstaining certificate is right: the smoothed classifier predicts ``prediction`` at every
      point within L2 distance ``radius`` (pixel units) of x. ``sound=True``: the same, in floating point, for the
      smoothed ``f(fl32(Q(z)))`` of ``sound_noise`` (bound lowered by its ``certification_slack``).
    """
    sigma, alpha = check_positive_sigma(sigma), check_alpha_or_traced(alpha)
    x = jnp.asarray(x)
    if sound:
        sound_noise.check_on_grid(x)
    return certify_keyed(as_keys(key, x), x, variables, H.alpha_operand(alpha), apply_fn=apply_fn, sigma=sigma,
                         n0=n0, n=n, batch_size=batch_size, num_classes=num_classes, sound=sound,
                         where=parallel.named_batch_axis(x, batch_axis) if x.ndim == 4 else None)


def certify_keyed(keys, x, variables, alpha_words, *, apply_fn, sigma, n0, n, batch_size, num_classes, sound,
                  where=None) -> Certificate:
    """``certify`` from per-image keys (``as_keys``) and ``alpha`` as ``_host_stats.alpha_operand`` words; a batch
    sharded over a mesh axis (or ``where``) is certified per device (``parallel.per_shard``)."""
    def local(keys, x, variables, *words):
        _, counts0, counts, slack = certify_counts(keys, apply_fn, variables, x, sigma=sigma, n0=n0, n=n,
                                                   batch_size=batch_size, num_classes=num_classes, sound=sound)
        return _certify_decision(counts0, counts, sigma, words, slack)
    if x.ndim == 3:
        return local(keys, x, variables, *alpha_words)
    return parallel.per_shard(local, x, keys, x, replicated=(variables, *alpha_words), where=where)


def predict(key, apply_fn: Callable, variables, x, *, sigma: float, n: int, alpha: float, batch_size: int,
            num_classes: int, sound: bool = False, batch_axis=None) -> jax.Array:
    """PREDICT (Cohen et al. 2019, Algorithm 2) for one image or a batch.

    Draws ``n`` noisy copies per image (keys, shapes, units and static arguments, ``batch_axis`` included, as in
    ``sample_counts``) and decides with ``predict_from_counts``.

    Returns:
      int32 class per image (scalar or (B,)), -1 to abstain. Guarantee: a non-abstaining answer differs from the
      smoothed classifier's prediction g(x) with probability <= alpha (+ n * certification_slack if ``sound``).
    """
    alpha, n = check_alpha_or_traced(alpha), check_int("n", n, 1)
    x = jnp.asarray(x)
    if sound:
        sound_noise.check_on_grid(x)
    return predict_keyed(as_keys(key, x), x, variables, H.alpha_operand(alpha), apply_fn=apply_fn, sigma=sigma, n=n,
                         batch_size=batch_size, num_classes=num_classes, sound=sound,
                         where=parallel.named_batch_axis(x, batch_axis) if x.ndim == 4 else None)


def predict_keyed(keys, x, variables, alpha_words, *, apply_fn, sigma, n, batch_size, num_classes, sound,
                  where=None) -> jax.Array:
    """``predict`` from per-image keys and alpha words, per device for a sharded batch (as ``certify_keyed``)."""
    def local(keys, x, variables, *words):
        counts = sample_counts(keys, apply_fn, variables, x, sigma=sigma, num=n, batch_size=batch_size,
                               num_classes=num_classes, sound=sound)
        return _predict_decision(counts, words)
    if x.ndim == 3:
        return local(keys, x, variables, *alpha_words)
    return parallel.per_shard(local, x, keys, x, replicated=(variables, *alpha_words), where=where)
