"""Anytime-valid one-sided tests of ``p <= p_g`` at the thresholds of a radius grid (sequential certification).

Sequential certification only needs to decide, for each grid radius ``r_g``, whether ``p_A > p_g = Phi(r_g /
sigma)``. A confidence sequence answers every threshold at once and pays for it; a test aimed at one threshold
can put all its power on alternatives just above it. Here each threshold ``p`` gets a mixture of likelihood ratios

    ``M_t(p) = sum_j w_j (q_j / p)^S ((1 - q_j) / (1 - p))^(t - S)``,   ``q_j > p``, ``w_j > 0``, ``sum_j w_j = 1``,

after ``S`` successes in ``t`` Bernoulli trials. Each factor has expectation ``pi q / p + (1 - pi)(1 - q) / (1 - p)
<= 1`` under any success probability ``pi <= p`` (it is linear in ``pi`` and equals 1 at ``pi = p``), so ``M_t(p)``
is a nonnegative supermartingale with ``M_0 = 1`` under every ``pi <= p``, and by Ville's inequality
``P[exists t: M_t(p) >= 1/alpha] <= alpha``: rejecting ``p_A <= p`` the first time ``M_t(p) >= 1/alpha`` is a
level-alpha test at any stopping time.

No union bound over the G thresholds is needed when radius ``g`` is certified only together with every smaller one
(``rejection_table`` makes the rejection counts nondecreasing in g): if ``p_A <= p_h`` and ``h`` is the smallest
such index, certifying any radius ``>= r_h`` needs test ``h`` to reject, which has probability ``<= alpha``.

``default_alternatives`` spends the prior where samples are expensive: on alternatives ``p + x delta`` with
``delta = Phi^-1(1 - alpha) sqrt(p (1 - p) / max_samples)`` (CERTIFY's margin with ``max_samples`` draws),
``x = 1.5, 3, 6, ...`` and weights halving, so images that CERTIFY would barely certify pay little over a
fixed-n test, while easy images (far above the threshold) pay a few extra draws. Everything is float64 on the host.
"""

from __future__ import annotations

import numpy as np
import scipy.special
import scipy.stats

from smoothjax.certification._host_stats import LOG_MARGIN, first_true

_FIRST, _RATIO, _DECAY = 1.5, 2.0, 0.5  # alternatives p + x delta: x = 1.5 * 2^j with weight 2^-j
_CAP = 1e-3  # the largest alternative is 1 - (1 - p) * _CAP


def default_alternatives(threshold: float, alpha: float, max_samples: int):
    """Alternatives and log-weights of the mixture for one threshold (see the module docstring).

    Args:
      threshold: ``p`` in (0, 1).
      alpha: level in (0, 1).
      max_samples: the most draws the test will see (sets the finest alternative).

    Returns:
      ``(q, log_w)``: float64 (J,) increasing alternatives in ``(p, 1)`` and log-weights with
      ``logsumexp(log_w) = 0``; ``q_j = min(p + 1.5 * 2^j * delta, 1 - (1 - p) / 1000)``, duplicates removed.
    """
    p = float(threshold)
    if not 0.0 < p < 1.0:
        raise ValueError(f"threshold={threshold!r} is not allowed; it must be in (0, 1)")
    delta = scipy.stats.norm.isf(alpha) * np.sqrt(p * (1.0 - p) / max_samples)
    top = 1.0 - (1.0 - p) * _CAP
    steps = int(np.ceil(np.log(max((top - p) / (_FIRST * delta), 1.0)) / np.log(_RATIO))) + 1
    q = np.unique(np.minimum(p + _FIRST * _RATIO ** np.arange(steps) * delta, top))
    log_w = np.arange(q.size) * np.log(_DECAY)
    return q, log_w - scipy.special.logsumexp(log_w)


def log_mixture(successes, trials, threshold: float, q, log_w) -> np.ndarray:
    """``log M_t(p)`` after ``S`` successes in ``t`` trials (float64, broadcast over the counts).

    Args:
      successes, trials: integer arrays, ``0 <= S <= t``.
      threshold: ``p`` in (0, 1).
      q, log_w: (J,) alternatives in ``(p, 1)`` and log-weights (``default_alternatives``).

    Returns:
      ``log sum_j exp(log_w_j + S log(q_j / p) + (t - S) log((1 - q_j) / (1 - p)))``; nondecreasing in ``S`` for
      fixed ``t``. ``exp`` of it is a supermartingale under every success probability ``<= p``.
    """
    s = np.asarray(successes, np.float64)[..., None]
    t = np.asarray(trials, np.float64)[..., None]
    p, q = float(threshold), np.asarray(q, np.float64)
    terms = log_w + s * np.log(q / p) + (t - s) * np.log1p(-q) - (t - s) * np.log1p(-p)
    return scipy.special.logsumexp(terms, axis=-1)


def rejection_table(alpha: float, checks, thresholds, max_samples: int) -> np.ndarray:
    """Smallest success counts at which the grid tests reject, made nondecreasing across the grid.

    Args:
      alpha: level in (0, 1) (a Python float).
      checks: (K,) increasing trial counts at which the tests are looked at.
      thresholds: (G,) increasing probabilities in (0, 1] (the grid's ``p_g``; 1 is never rejected).
      max_samples: passed to ``default_alternatives``.

    Returns:
      int64 (K, G) ``s_lower``: radius g is certified after check k iff ``S >= s_lower[k, g]`` (``t_k + 1`` =
      never). ``s_lower[k, g] = max_{h <= g} min{S : log M_{t_k}(p_h) >= log(1/alpha) + 1e-8}``, so a rejection
      at g implies test g and every test below it rejected: P[some radius above the true one is certified at
      some check] <= alpha (module docstring).
    """
    checks = np.asarray(checks, np.int64)
    threshold = np.log(1.0 / alpha) + LOG_MARGIN
    table = np.empty((checks.size, len(thresholds)), np.int64)
    for g, p in enumerate(np.asarray(thresholds, np.float64)):
        if p >= 1.0:  # no success count rejects p_A <= 1
            table[:, g] = checks + 1
            continue
        q, log_w = default_alternatives(p, alpha, max_samples)
        start = np.floor(p * checks).astype(np.int64)  # below p t the statistic is < 1 (every term < 0 in log)
        table[:, g] = first_true(lambda s: log_mixture(s, checks, p, q, log_w) >= threshold, start, checks)
    return np.maximum.accumulate(table, axis=1)
