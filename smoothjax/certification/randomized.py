"""CERTIFY with the randomized Clopper-Pearson bound: exact coverage, and no ``alpha^(1/n)`` cap on p_A's bound.

Cohen et al.'s CERTIFY bounds ``p_A`` with the one-sided Clopper-Pearson bound, which is conservative for a discrete
count: ``P[L > p_A] < alpha`` strictly, and with ``n_A = n`` the bound is ``alpha^(1/n)`` at most, so no radius
beyond ``sigma * Phi^-1(alpha^(1/n))`` (3.81 sigma at n = 100,000, alpha = 0.001) can ever be certified. Inverting
the *randomized* binomial test instead (``randomized_clopper_pearson_lower``; Voracek, NeurIPS
2024) gives ``P[L > p_A] = alpha`` exactly and ``L = 1`` (an infinite radius) with probability alpha when every draw
hits. The price: the certificate depends on one extra Uniform(0, 1) draw ``u`` besides the noise, so two runs with
different keys may disagree on the same counts; report such certificates separately from deterministic ones.

``u`` comes from the image's key as ``jax.random.bits(fold_in(key, noise.UNIFORM_STREAM), (2,), uint32)``: 53 of
those 64 bits give ``u = (k + 1) / 2^53``, which is stochastically *larger* than a continuous uniform, so the
coverage is ``<= alpha`` (within 2^-53 of equality). The selection and estimation draws are exactly
``cohen.certify``'s for the same key (same counts), so the two decisions can be compared draw for draw.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from smoothjax.certification import _host_stats as H
from smoothjax.certification._sampling import certify_counts, check_alpha, check_positive_sigma
from smoothjax.certification.cohen import Certificate
from smoothjax.noise import UNIFORM_STREAM


def randomized_clopper_pearson_lower(successes, trials, alpha: float, u) -> np.ndarray:
    """Randomized one-sided Clopper-Pearson lower bound with exact coverage (float64, on the host).

    Args:
      successes, trials: counts ``0 <= S <= n``, n >= 1.
      alpha: level in (0, 1).
      u: independent Uniform(0, 1) draws (broadcast with the counts).

    Returns:
      ``L = sup{m : P_m[X > S] + u P_m[X = S] <= alpha}`` (X ~ Binomial(n, m)), the inversion of the randomized
      test; for every true p, ``P[L > p] = alpha`` exactly (the randomized p-value is Uniform(0, 1) under p), and
      ``L = 1`` when ``S = n`` and ``u <= alpha`` (no ``alpha^(1/n)`` cap). The certificate depends on ``u``.
    """
    s, n, u = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (successes, trials, u)))

    def pvalue(m):
        return scipy.stats.binom.sf(s, n, m) + u * scipy.stats.binom.pmf(s, n, m)

    lower, _ = H.bisect(lambda m: pvalue(m) <= alpha * H.LEVEL_FACTOR, np.zeros_like(s), np.ones_like(s))
    return np.where(pvalue(np.ones_like(s)) <= alpha * H.LEVEL_FACTOR, 1.0, lower)


def uniform_from_bits(hi, lo) -> np.ndarray:
    """float64 ``u = (k + 1) / 2^53`` in (0, 1], ``k`` the top 53 bits of the 64-bit word ``(hi << 32) | lo``.

    ``hi``, ``lo``: uint32 arrays (or int32 carrying the same bits). For uniform random bits, ``P[u <= v] <= v``
    for every v (u dominates a Uniform(0, 1) variable and is within 2^-53 of it).
    """
    hi, lo = (np.asarray(v).astype(np.int64) & 0xFFFFFFFF for v in (hi, lo))
    k = (hi << 21) | (lo >> 11)
    return (k.astype(np.float64) + 1.0) / 2.0**53


def _host_randomized(n_a, n, hi, lo, *, alpha, sigma, slack):
    u = uniform_from_bits(hi, lo)
    p64 = randomized_clopper_pearson_lower(np.asarray(n_a), np.maximum(np.asarray(n), 1), alpha, u) - slack
    return H.decide(np.where(np.asarray(n) >= 1, p64, np.nan), sigma)  # radius +inf when the bound is 1


def randomized_certify_from_counts(counts_selection, counts_estimation, bits, *, sigma: float, alpha: float,
                                   slack: float = 0.0) -> Certificate:
    """CERTIFY's decision with the randomized Clopper-Pearson lower bound (no model).

    Args:
      counts_selection, counts_estimation: int (..., K) class counts of independent selection and estimation draws.
      bits: uint32 (..., 2) uniform random bits, independent of the draws; ``u = uniform_from_bits(*bits)``.
      sigma: pixel units, Python float > 0; alpha: Python float in (0, 1) (both static).
      slack: subtracted from the float64 bound first (sound noise).

    Returns:
      ``Certificate`` (...): abstain iff ``L < 1/2``, else ``c_A`` with radius ``sigma * Phi^-1(L)`` rounded down
      (``inf`` when ``L = 1``). ``L`` is the randomized bound at ``u``; over the noise *and* u, a certificate is
      wrong with probability <= alpha, with equality (up to 2^-53) for the bound itself: ``P[L > p_A] = alpha``.
    """
    sigma, alpha = check_positive_sigma(sigma), check_alpha(alpha)
    sel, est, bits = jnp.asarray(counts_selection), jnp.asarray(counts_estimation), jnp.asarray(bits)
    if sel.ndim < 1 or sel.shape != est.shape or bits.shape != sel.shape[:-1] + (2,):
        raise ValueError(f"shapes {sel.shape}, {est.shape}, bits {bits.shape} are not allowed; need counts (..., K) "
                         "twice and bits (..., 2)")
    guess = jnp.argmax(sel, axis=-1).astype(jnp.int32)
    count = jnp.take_along_axis(est, guess[..., None], axis=-1)[..., 0].astype(jnp.int32)
    total = jnp.sum(est, axis=-1, dtype=jnp.int32)
    words = jax.lax.bitcast_convert_type(bits.astype(jnp.uint32), jnp.int32)  # H.callback passes int32.
    host = functools.partial(_host_randomized, alpha=alpha, sigma=sigma, slack=slack)
    p_lower, radius, abstain = H.callback(host, (jnp.float32, jnp.float32, jnp.bool_), count, total,
                                           words[..., 0], words[..., 1])
    return Certificate(jnp.where(abstain, jnp.int32(-1), guess), radius, p_lower, count, guess)


def uniform_bits(keys) -> jax.Array:
    """uint32 (..., 2): the bits of ``u`` for each image key, ``bits(fold_in(key, noise.UNIFORM_STREAM), (2,))``."""
    one = lambda k: jax.random.bits(jax.random.fold_in(k, UNIFORM_STREAM), (2,), jnp.uint32)
    return one(keys) if keys.ndim == 0 else jax.vmap(one)(keys)


def certify_randomized(key, apply_fn: Callable, variables, x, *, sigma: float, n0: int = 100, n: int = 100_000,
                       alpha: float = 0.001, batch_size: int = 1000, num_classes: int,
                       sound: bool = False) -> Certificate:
    """CERTIFY (Cohen et al. 2019) with the randomized Clopper-Pearson bound in place of the ordinary one.

    Arguments, keys, shapes and units as ``cohen.certify``; the counts are exactly ``certify``'s for the
    same key, and ``u`` comes from ``uniform_bits(key)`` (see the module docstring).

    Returns:
      ``Certificate`` of scalars (one image) or (B,) arrays; the radius may be ``inf`` (all ``n`` draws hit and
      ``u <= alpha``). Guarantee, per input: with probability >= 1 - alpha over the noise and u, a non-abstaining
      certificate is right (the smoothed classifier predicts ``prediction`` on the open L2 ball of ``radius``).
      The bound's coverage is exact rather than conservative, so it is never below ``certify``'s in distribution
      terms, but for a given key it can be lower or higher than ``certify``'s: report it separately.
    """
    sigma, alpha = check_positive_sigma(sigma), check_alpha(alpha)
    keys, counts0, counts, slack = certify_counts(key, apply_fn, variables, x, sigma=sigma, n0=n0, n=n,
                                                  batch_size=batch_size, num_classes=num_classes, sound=sound)
    return randomized_certify_from_counts(counts0, counts, uniform_bits(keys), sigma=sigma, alpha=alpha, slack=slack)
