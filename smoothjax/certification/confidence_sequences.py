"""Anytime-valid confidence sequences for a Bernoulli mean, and the exact decision tables sequential certification uses.

A (1 - alpha) *confidence sequence* (CS) for ``p`` is a sequence of sets ``C_t`` computed from the first ``t``
outcomes of i.i.d. Bernoulli(p) draws with ``P[exists t >= 1: p not in C_t] <= alpha``. Because the guarantee holds
for all ``t`` at once, it holds at any data-dependent stopping time: one may look after every batch and stop when
the answer is clear. All bounds here depend on the data only through ``(S, t)``, successes among ``t`` trials.

* ``betting`` (default): the betting CS of Waudby-Smith & Ramdas (2023, "Estimating means of bounded random
  variables by betting", JRSS-B) with the Krichevsky-Trofimov (KT) bettor, as Voracek (NeurIPS 2024) uses for
  randomized smoothing. Against a candidate mean ``m`` the gambler bets ``lambda_i = (q_i - m) / (m (1 - m))`` with
  the KT estimate ``q_i = (S_{i-1} + 1/2) / i``, so the wealth ``K_t(m) = prod_i (1 + lambda_i (X_i - m))`` equals
  ``B(S + 1/2, t - S + 1/2) / (B(1/2, 1/2) m^S (1 - m)^(t - S))`` in closed form (Beta(1/2, 1/2) mixture of
  likelihood ratios). ``K_t(p)`` is a nonnegative martingale with mean 1, so by Ville's inequality
  ``C_t = {m : K_t(m) < 1/alpha}`` is a (1 - alpha) CS. ``log K_t(m)`` is convex in ``m`` with its minimum (<= 0) at
  ``S/t``, so ``C_t`` is an interval ``(L_t, U_t)`` around ``S/t``.
* ``union``: Clopper-Pearson intervals at the checking times ``t_1 < ... < t_K`` only, each at level
  ``alpha / K`` (Bonferroni): ``P[exists k: p < L_k or p > U_k]`` is not bounded by alpha jointly, but each *side*
  is: ``P[exists k: L_k > p] <= alpha`` and ``P[exists k: U_k < p] <= alpha``. Simpler; valid only at those times.

Everything is float64 NumPy/SciPy on the host. Decisions are made *conservatively*: a candidate is excluded only
when the test statistic clears the threshold by a margin (``1e-8`` nats for betting, a factor ``1 - 1e-9`` on the
level for union bounds) that absorbs float64 rounding, and bounds are returned from the safe end of a bisection.
"""

from __future__ import annotations

import numpy as np
import scipy.special
import scipy.stats

from smoothjax.certification._host_stats import LEVEL_FACTOR, LOG_MARGIN, bisect, first_true

METHODS = ("betting", "union")


def check_method(method) -> str:
    """Returns ``method`` or raises a one-line ValueError when it is not one of ``METHODS``."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not allowed; choose one of: {', '.join(METHODS)}")
    return method


def betting_log_wealth(m, successes, trials) -> np.ndarray:
    """Log-wealth ``log K_t(m)`` of the KT betting martingale against mean ``m`` after ``S`` successes in ``t`` trials.

    Args:
      m: candidate means in [0, 1] (float64 array, broadcast with the counts).
      successes, trials: integers ``0 <= S <= t``.

    Returns:
      float64 ``betaln(S + 1/2, t - S + 1/2) - betaln(1/2, 1/2) - S log m - (t - S) log(1 - m)`` (+inf where a
      candidate is impossible, e.g. m = 0 with S > 0). Under i.i.d. Bernoulli(m) data, ``exp`` of it is a
      nonnegative martingale in t with expectation 1.
    """
    m, s, t = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (m, successes, trials)))
    with np.errstate(divide="ignore"):
        return (scipy.special.betaln(s + 0.5, t - s + 0.5) - scipy.special.betaln(0.5, 0.5)
                - scipy.special.xlogy(s, m) - scipy.special.xlog1py(t - s, -m))


def betting_bounds(successes, trials, alpha: float):
    """The KT betting CS ``(L_t, U_t)`` at level 1 - alpha, for arrays of counts (float64, conservative).

    Returns:
      ``(lower, upper)`` float64 arrays of the broadcast shape with ``lower <= inf C_t`` and ``upper >= sup C_t``
      (up to the stated margin): ``P[exists t: p < L_t or p > U_t] <= alpha`` for i.i.d. Bernoulli(p) outcomes.
      ``L_t = 0`` when ``S = 0`` and ``U_t = 1`` when ``S = t``; trials must be >= 1.
    """
    s, t = np.broadcast_arrays(np.asarray(successes, np.float64), np.asarray(trials, np.float64))
    threshold = np.log(1.0 / alpha) + LOG_MARGIN
    mean = s / t
    lower, _ = bisect(lambda m: betting_log_wealth(m, s, t) >= threshold, np.zeros_like(mean), mean)
    _, upper = bisect(lambda m: betting_log_wealth(m, s, t) < threshold, mean, np.ones_like(mean))
    return np.where(s > 0, lower, 0.0), np.where(s < t, upper, 1.0)


def union_bounds(successes, trials, level: float):
    """One-sided Clopper-Pearson ``(L, U)`` at ``level`` each: ``P[L > p] <= level`` and ``P[U < p] <= level``."""
    s, t = np.broadcast_arrays(np.asarray(successes, np.float64), np.asarray(trials, np.float64))
    level = level * LEVEL_FACTOR
    lower = scipy.stats.beta.ppf(level, np.maximum(s, 1.0), t - s + 1.0)
    upper = scipy.stats.beta.isf(level, s + 1.0, np.maximum(t - s, 1.0))
    return np.where(s > 0, lower, 0.0), np.where(s < t, upper, 1.0)


def bounds(method: str, successes, trials, alpha: float, num_checks: int):
    """``(lower, upper)`` of ``method`` after ``S`` of ``t`` (float64); ``num_checks`` = K for ``union``."""
    if check_method(method) == "betting":
        return betting_bounds(successes, trials, alpha)
    return union_bounds(successes, trials, alpha / num_checks)


def decision_tables(method: str, alpha: float, checks, thresholds):
    """Integer thresholds that turn the CS decisions at the checking times into exact count comparisons.

    Args:
      method: ``"betting"`` or ``"union"`` (K = len(checks) Bonferroni terms).
      alpha: Python float in (0, 1).
      checks: increasing trial counts ``t_1 < ... < t_K`` at which the sequence is looked at.
      thresholds: increasing probabilities ``p_1 < ... < p_G`` in (0, 1).

    Returns:
      ``(s_lower, s_upper)``, int64 arrays (K, G): after ``S`` successes in ``t_k`` trials, ``L_{t_k} >= p_g`` iff
      ``S >= s_lower[k, g]`` (``t_k + 1`` = never) and ``U_{t_k} < p_g`` iff ``S <= s_upper[k, g]`` (-1 = never),
      for the conservative (margin-including) tests of this module. Exactness: for betting, ``m`` below ``S/t`` is
      excluded iff ``log K_t(m) >= threshold``, and ``K_t(m)`` as a function of S is nondecreasing for
      ``S >= m t - 1/2`` and nonincreasing for ``S <= m t + 1/2`` (``K(S + 1) / K(S) = (S + 1/2)(1 - m) /
      ((t - S - 1/2) m)``), so the sets are up- and down-closed in S; Clopper-Pearson tails are monotone in S.
    """
    check_method(method)
    t = np.asarray(checks, np.int64)[:, None] + np.zeros((1, len(thresholds)), np.int64)
    p = np.asarray(thresholds, np.float64)[None, :] + np.zeros(t.shape)
    if method == "betting":
        threshold = np.log(1.0 / alpha) + LOG_MARGIN
        start = np.ceil(p * t).astype(np.int64)  # S >= p t: p is at or below the mean S / t.
        s_lower = first_true(lambda s: betting_log_wealth(p, s, t) >= threshold, start, t)
        stop = np.floor(p * t).astype(np.int64)
        s_upper = first_true(lambda s: betting_log_wealth(p, s, t) < threshold, 0, stop) - 1
    else:
        level = alpha / len(checks) * LEVEL_FACTOR
        # L >= p  iff  P_p[X >= S] <= level;  U < p  iff  P_p[X <= S] <= level  (X ~ Binomial(t, p)).
        s_lower = first_true(lambda s: scipy.stats.binom.sf(s - 1, t, p) <= level, 0, t)
        s_upper = first_true(lambda s: scipy.stats.binom.cdf(s, t, p) > level, 0, t) - 1
    return s_lower, s_upper
