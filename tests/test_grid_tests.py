"""Tests of smoothjax.certification.grid_tests (one anytime-valid test per grid threshold) against exact binomial
recursions."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special as sp
import scipy.stats as st

from smoothjax import certification as C
from smoothjax.certification import grid_tests as G

THRESHOLDS = st.norm.cdf([0.0, 1.0, 2.0, 3.0])


def exact_crossing_probability(p, checks, s_lower):
    """P_p[some check k has S_{t_k} >= s_lower[k]] for i.i.d. Bernoulli(p) draws, by forward recursion over the
    count distribution (absorbing the mass that crosses): an exact oracle, no simulation."""
    mass, crossed, prev = np.zeros(checks[-1] + 1), 0.0, 0
    mass[0] = 1.0
    for t, s in zip(checks, s_lower):
        kernel = st.binom.pmf(np.arange(t - prev + 1), t - prev, p)
        mass = np.convolve(mass, kernel)[: checks[-1] + 1]
        crossed += mass[s:].sum()
        mass[s:] = 0.0
        prev = t
    return crossed


@pytest.mark.parametrize("alpha", [0.05, 0.001])
def test_type1_error_over_all_looks_is_at_most_alpha_exactly(alpha):
    checks = np.arange(1, 101) * 20  # 100 looks, up to 2000 draws
    table = G.rejection_table(alpha, checks, THRESHOLDS, max_samples=2000)
    for g, p in enumerate(THRESHOLDS):
        for true_p in (p, p - 0.3 * (1 - p)):  # at the threshold (worst case) and below it
            assert exact_crossing_probability(true_p, checks, table[:, g]) <= alpha
    # ... and the tests have power: at a p_A well above each threshold they reject with high probability (not at
    # Phi(3): 2000 draws cannot certify 3 sigma, since even all hits give (1 / p)^2000 < 1 / alpha).
    for g, p in enumerate(THRESHOLDS[:3]):
        assert exact_crossing_probability(p + 0.7 * (1 - p), checks, table[:, g]) > 0.5


def test_the_recursion_catches_a_test_that_is_not_anytime_valid():
    # A fixed-n Clopper-Pearson test at level alpha, repeated at each of 100 looks, is not a sequential test: the
    # same oracle must report an error rate far above alpha.
    alpha, checks = 0.05, np.arange(1, 101) * 20
    s_fixed = np.array([st.binom.isf(alpha, t, 0.5) + 1 for t in checks], np.int64)  # P[S >= s] <= alpha per look
    assert exact_crossing_probability(0.5, checks, s_fixed) > 3 * alpha


def test_mixture_is_the_weighted_likelihood_ratio_product_and_a_supermartingale():
    p, alpha = float(st.norm.cdf(2.0)), 0.001
    q, log_w = G.default_alternatives(p, alpha, 10_000)
    assert np.all((q > p) & (q < 1)) and np.all(np.diff(q) > 0) and abs(sp.logsumexp(log_w)) < 1e-12
    x = (np.random.default_rng(0).uniform(size=400) < 0.99).astype(np.float64)
    ratios = np.where(x[:, None] == 1, q / p, (1 - q) / (1 - p))  # (t, J) one factor per draw and alternative
    direct = np.log(np.cumprod(ratios, axis=0) @ np.exp(log_w))
    ours = G.log_mixture(np.cumsum(x), np.arange(1, 401), p, q, log_w)
    np.testing.assert_allclose(ours, direct, rtol=1e-9, atol=1e-12)
    s, t = np.meshgrid(np.arange(0, 50), np.arange(50, 100))
    for true_p, equal in ((p, True), (p - 0.05, False)):  # E[M_{t+1} | S_t] = M_t at p, < M_t below p
        nxt = true_p * np.exp(G.log_mixture(s + 1, t + 1, p, q, log_w)) + (1 - true_p) * np.exp(
            G.log_mixture(s, t + 1, p, q, log_w))
        now = np.exp(G.log_mixture(s, t, p, q, log_w))
        if equal:
            np.testing.assert_allclose(nxt, now, rtol=1e-10)
        else:
            assert np.all(nxt < now)


def test_rejection_table_is_the_smallest_rejecting_count_and_nondecreasing_over_the_grid():
    alpha, checks = 0.01, np.array([10, 40, 100, 400])
    table = G.rejection_table(alpha, checks, THRESHOLDS, max_samples=400)
    brute = np.empty_like(table)
    for g, p in enumerate(THRESHOLDS):
        q, log_w = G.default_alternatives(p, alpha, 400)
        for k, t in enumerate(checks):
            ok = [G.log_mixture(s, t, p, q, log_w) >= np.log(1 / alpha) + 1e-8 for s in range(t + 1)]
            brute[k, g] = np.argmax(ok) if any(ok) else t + 1
    np.testing.assert_array_equal(table, np.maximum.accumulate(brute, axis=1))
    assert np.all(np.diff(table, axis=1) >= 0)
    assert np.all(G.rejection_table(alpha, checks, [0.5, 1.0], 400)[:, 1] == checks + 1)  # p = 1: never


def test_grid_tests_need_fewer_draws_than_the_betting_sequence_near_a_threshold():
    # Same decision (certify p_A > p) from the same binomial stream: at p_A just above the threshold the grid
    # test must reject with fewer draws than the KT betting confidence sequence (which pays for every threshold).
    from smoothjax.certification import confidence_sequences as cs
    alpha, checks, p = 0.001, np.arange(1, 1001) * 100, float(st.norm.cdf(2.0))
    grid = G.rejection_table(alpha, checks, [p], 100_000)[:, 0]
    betting = cs.decision_tables("betting", alpha, checks, [p])[0][:, 0]
    expected = checks * (p + 0.004)  # the mean path of an image CERTIFY certifies at r = 2 sigma with margin
    first = [checks[np.argmax(expected >= table)] for table in (grid, betting)]
    assert first[0] < 0.8 * first[1]


def test_certify_sequential_grid_certifies_grid_radii_soundly_on_a_linear_classifier():
    # Two classes, logits (z, -z), z = w.x + b with |w| = 1: p_A = Phi(|margin| / sigma), true radius = |margin|.
    sigma, alpha, grid = 0.5, 0.2, (0.0, 0.125, 0.25, 0.375, 0.5)
    margins = np.tile(np.array(grid[1:]) - 0.01, 40) * np.where(np.arange(160) % 2, 1, -1)
    rng = np.random.default_rng(0)
    w = rng.normal(size=16).astype(np.float32)
    w /= np.linalg.norm(w)
    b = np.float32(-0.5 * w.sum())
    images = (0.5 + margins[:, None] * w[None, :]).astype(np.float32)
    true = images.astype(np.float64) @ w + np.float64(b)

    def apply_fn(params, x):
        z = x.reshape(x.shape[0], -1) @ params[0] + params[1]
        return jnp.stack([z, -z], axis=-1)

    cert = jax.jit(functools.partial(C.certify_sequential, apply_fn=apply_fn, sigma=sigma, radii=grid, alpha=alpha,
                                     n0=20, max_samples=1500, batch_size=50, num_classes=2, method="grid"))(
        jax.random.key(1), variables=(jnp.asarray(w), jnp.asarray(b)), x=jnp.asarray(images.reshape(-1, 4, 4, 1)))
    truth = np.where(true > 0, 0, 1)
    wrong = (cert.prediction != -1) & ((cert.prediction != truth) | (cert.radius > np.abs(true)))
    assert np.mean(wrong) <= alpha + 4 * np.sqrt(alpha * (1 - alpha) / len(margins))
    assert np.mean(cert.prediction == -1) < 0.2
    certified = cert.prediction != -1
    assert np.all(np.isin(cert.radius[certified], np.float32(grid)))  # grid radii only
    np.testing.assert_array_equal(cert.p_a_lower[certified] <= st.norm.cdf(cert.radius[certified] / sigma) + 1e-7,
                                  True)


def test_bad_threshold_raises():
    with pytest.raises(ValueError, match="threshold=1.5"):
        G.default_alternatives(1.5, 0.01, 100)
    with pytest.raises(ValueError, match="method='grids'"):
        C.certify_sequential(jax.random.key(0), lambda v, x: x, None, jnp.zeros((2, 2, 1)), sigma=0.5, radii=(0.0,),
                             num_classes=2, method="grids")
