"""Tests of smoothjax.certification.confidence_sequences and .sequential against closed forms, SciPy and simulation."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special as sp
import scipy.stats as st

from smoothjax import certification as C
from smoothjax.certification import _sampling
from smoothjax.certification import confidence_sequences as cs
from smoothjax.certification import sequential as S

HERE = Path(__file__).resolve().parent
SIGMA = 0.5
GRID = tuple(SIGMA * np.arange(0, 7) * 0.25)  # 0, 0.125, ..., 0.75 = 1.5 sigma


def linear2(params, images):
    """2 classes: logits (z, -z), z = w . x + b; with |w| = 1, z is the signed distance, p_A = Phi(|z| / sigma)."""
    w, b = params
    z = images.reshape(images.shape[0], -1) @ w + b
    return jnp.stack([z, -z], axis=-1)


def linear2_problem(margins, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=16)
    w32 = (w / np.linalg.norm(w)).astype(np.float32)
    b32 = np.float32(-0.5 * w32.sum())
    images = (0.5 + np.asarray(margins)[:, None] * w32[None, :]).astype(np.float32)
    true = (images.astype(np.float64) @ w32 + np.float64(b32)) / np.linalg.norm(w32.astype(np.float64))
    return (jnp.asarray(w32), jnp.asarray(b32)), jnp.asarray(images.reshape(-1, 4, 4, 1)), true


def always(cls):
    """A constant 3-class model: every noisy copy is classified as ``cls`` (p_A = 1 exactly)."""
    return lambda v, images: jnp.broadcast_to(jax.nn.one_hot(cls, 3), (images.shape[0], 3)) + 0 * v


# --------------------------------------------------------------------------- the betting CS, published construction
def test_betting_wealth_is_the_kt_bettor_wealth_and_a_martingale():
    # Waudby-Smith & Ramdas' capital prod(1 + lambda_i (X_i - m)) with the KT bet lambda_i = (q_i - m) / (m (1 - m)),
    # q_i = (S_{i-1} + 1/2) / i, computed path-wise; our closed form must agree for every m on the path.
    rng = np.random.default_rng(3)
    x = (rng.uniform(size=300) < 0.8).astype(np.float64)
    for m in (0.1, 0.5, 0.8, 0.95):
        s_prev = np.concatenate([[0.0], np.cumsum(x)[:-1]])
        q = (s_prev + 0.5) / np.arange(1, 301)
        log_capital = np.cumsum(np.log1p((q - m) / (m * (1 - m)) * (x - m)))
        ours = cs.betting_log_wealth(m, np.cumsum(x), np.arange(1, 301))
        np.testing.assert_allclose(ours, log_capital, rtol=1e-9, atol=1e-9)
    # Exact martingale identity E_p[K_t(p)] = 1 (so Ville's inequality gives level alpha), by summing the pmf.
    for t, p in ((1, 0.3), (57, 0.5), (400, 0.97)):
        s = np.arange(t + 1)
        terms = st.binom.logpmf(s, t, p) + cs.betting_log_wealth(p, s, t)
        assert abs(np.exp(sp.logsumexp(terms)) - 1.0) < 1e-9


def test_betting_bounds_invert_the_wealth_on_a_grid():
    # The CS {m : K_t(m) < 1/alpha} found by brute force on a fine grid (the paper's definition) vs our bounds.
    alpha, grid = 0.01, np.linspace(1e-6, 1 - 1e-6, 200_001)
    for s, t in ((0, 20), (3, 20), (20, 20), (480, 500), (5000, 10_000)):
        inside = grid[cs.betting_log_wealth(grid, s, t) < np.log(1 / alpha)]
        lower, upper = cs.betting_bounds(s, t, alpha)
        assert lower <= inside.min() and inside.min() - lower < 1e-5
        assert upper >= inside.max() and upper - inside.max() < 1e-5
    # Closed form at S = t: L_t = exp((betaln(t + 1/2, 1/2) - betaln(1/2, 1/2) - log(1/alpha)) / t).
    t = np.array([10, 100, 1000, 100_000])
    closed = np.exp((sp.betaln(t + 0.5, 0.5) - sp.betaln(0.5, 0.5) - np.log(1 / alpha)) / t)
    np.testing.assert_allclose(cs.betting_bounds(t, t, alpha)[0], closed, rtol=1e-8)  # 1e-8-nat margin
    assert np.all(cs.betting_bounds(t, t, alpha)[0] <= closed)


def test_union_bounds_are_clopper_pearson_at_alpha_over_k():
    s, t = np.array([0, 7, 50, 99]), np.array([10, 40, 50, 120])
    lower, upper = cs.bounds("union", s, t, 0.05, 5)
    np.testing.assert_allclose(lower, np.where(s > 0, st.beta.ppf(0.01, np.maximum(s, 1), t - s + 1), 0), rtol=1e-7)
    np.testing.assert_allclose(upper, np.where(s < t, st.beta.ppf(0.99, s + 1, np.maximum(t - s, 1)), 1), rtol=1e-7)


@pytest.mark.parametrize("method", cs.METHODS)
def test_decision_tables_equal_the_bounds_for_every_count(method):
    checks, thresholds = np.array([7, 40, 201]), np.array([0.5, 0.62, 0.9, 0.999])
    s_lower, s_upper = cs.decision_tables(method, 0.01, checks, thresholds)
    for k, t in enumerate(checks):
        s = np.arange(t + 1)
        lower, upper = cs.bounds(method, s, t, 0.01, len(checks))
        for g, p in enumerate(thresholds):
            np.testing.assert_array_equal(s >= s_lower[k, g], lower >= p)
            np.testing.assert_array_equal(s <= s_upper[k, g], upper < p)


# ------------------------------------------------------------------------------------ type-1 error by simulation
def _crossing_rates(method, alpha, p, runs=100_000, batch=20, num_checks=50, seed=0):
    """Fractions of runs where some look has L > p (lower side) and where some look has U < p (upper side)."""
    rng = np.random.default_rng(seed)
    hits = np.cumsum(rng.binomial(batch, p, size=(runs, num_checks)), axis=1, dtype=np.int32)
    checks = np.arange(1, num_checks + 1) * batch
    s_lower, s_upper = cs.decision_tables(method, alpha, checks, [np.nextafter(p, 1.0)])
    return np.mean(np.any(hits >= s_lower[:, 0], axis=1)), np.mean(np.any(hits <= s_upper[:, 0], axis=1))


@pytest.mark.parametrize("p", [0.5, float(st.norm.cdf(0.5)), float(st.norm.cdf(2.0)), float(st.norm.cdf(2.75))])
@pytest.mark.parametrize("method", cs.METHODS)
def test_type1_error_over_all_looks_is_at_most_alpha(method, p):
    alpha, runs = 0.05, 100_000
    tolerance = 4 * np.sqrt(alpha * (1 - alpha) / runs)
    lower_rate, upper_rate = _crossing_rates(method, alpha, p, runs)
    assert lower_rate <= alpha + tolerance and upper_rate <= alpha + tolerance


def test_the_simulation_catches_a_bound_that_is_not_anytime_valid():
    # Clopper-Pearson at level alpha at each of 50 looks (no correction) is a valid interval at any *fixed* n but
    # not over the looks: the same harness must flag it.
    alpha = 0.05
    lower_rate, upper_rate = _crossing_rates("union", alpha * 50, 0.5)
    assert lower_rate > 3 * alpha and upper_rate > 3 * alpha


def test_randomized_clopper_pearson_has_exact_coverage():
    rng = np.random.default_rng(5)
    n, alpha, p, runs = 30, 0.1, 0.8, 100_000
    s, u = rng.binomial(n, p, size=runs), rng.uniform(size=runs)
    lower = C.randomized_clopper_pearson_lower(s, n, alpha, u)
    rate = np.mean(lower > p)
    assert abs(rate - alpha) < 4 * np.sqrt(alpha * (1 - alpha) / runs)  # Exact, not just <= alpha.
    deterministic = np.mean(st.beta.ppf(alpha, np.maximum(s, 1), n - s + 1) * (s > 0) > p)
    assert deterministic < alpha - 0.02  # Ordinary Clopper-Pearson is conservative here; the randomized one is not.
    assert C.randomized_clopper_pearson_lower(n, n, alpha, 0.5 * alpha) == 1.0  # No alpha^(1/n) cap.


# -------------------------------------------------------------------------------------- sequential certification
@pytest.mark.parametrize("method", cs.METHODS)
def test_stopping_time_and_radius_in_closed_form_when_p_a_is_one(method):
    # Every draw hits: L_t has a closed form, so the stopping time and the certified grid radius are known exactly.
    alpha, batch, max_samples, n0 = 0.001, 50, 2000, 10
    checks = np.arange(1, max_samples // batch + 1) * batch
    if method == "betting":
        lower = np.exp((sp.betaln(checks + 0.5, 0.5) - sp.betaln(0.5, 0.5) - np.log(1 / alpha)) / checks)
    else:
        lower = (alpha / len(checks)) ** (1.0 / checks)  # Clopper-Pearson lower bound at S = t.
    grid = np.asarray(GRID) * 4  # up to 6 sigma, beyond reach at 2000 draws.
    reachable = grid[st.norm.cdf(grid / SIGMA) < lower[-1]]
    top = reachable[-1]
    stop = checks[np.argmax(lower >= st.norm.cdf(top / SIGMA))]
    cert = jax.jit(functools.partial(C.certify_sequential, apply_fn=always(2), sigma=SIGMA, radii=tuple(grid),
                                     alpha=alpha, n0=n0, max_samples=max_samples, batch_size=batch, num_classes=3,
                                     method=method))(jax.random.key(0), variables=jnp.float32(0),
                                                     x=jnp.zeros((3, 2, 2, 1)))
    np.testing.assert_array_equal(cert.num_samples, n0 + stop)
    np.testing.assert_array_equal(cert.prediction, 2)
    np.testing.assert_array_equal(cert.count, stop)
    expected = max(top, SIGMA * st.norm.ppf(lower[checks == stop][0]))
    assert np.all(cert.radius <= expected) and np.all(expected - cert.radius < 1e-6)


@pytest.mark.parametrize("futility", S.FUTILITY_RULES)
@pytest.mark.parametrize("method", cs.METHODS)
def test_sequential_certificates_are_sound_on_a_linear_classifier(method, futility):
    # True robust radius of the smoothed linear classifier = |margin|; margins just below grid radii are the hardest.
    alpha = 0.2
    margins = np.tile(np.array(GRID[1:]) - 0.01, 40)
    margins = np.where(np.arange(margins.size) % 2, margins, -margins)  # both classes
    params, images, true = linear2_problem(margins)
    cert = jax.jit(functools.partial(C.certify_sequential, apply_fn=linear2, sigma=SIGMA, radii=GRID, alpha=alpha,
                                     n0=20, max_samples=1500, batch_size=50, num_classes=2, method=method,
                                     futility=futility))(
        jax.random.key(1), variables=params, x=images)
    truth = np.where(true > 0, 0, 1)
    wrong = (cert.prediction != -1) & ((cert.prediction != truth) | (cert.radius > np.abs(true)))
    assert np.mean(wrong) <= alpha + 4 * np.sqrt(alpha * (1 - alpha) / len(margins))
    assert np.mean(cert.prediction == -1) < 0.2  # and it does certify most of them
    assert np.all(cert.num_samples <= 20 + 1500)


def test_easy_points_need_far_fewer_samples_than_certify():
    params, images, true = linear2_problem(np.array([2.5, -2.5, 3.0]) * SIGMA)
    seq = jax.jit(functools.partial(C.certify_sequential, apply_fn=linear2, sigma=SIGMA, alpha=0.001, n0=100,
                                    batch_size=200, num_classes=2, radii=GRID, max_samples=100_000))(
        jax.random.key(2), variables=params, x=images)
    assert np.all(seq.num_samples <= (100 + 100_000) / 20)  # >= 20x fewer forward passes than CERTIFY's n0 + n
    np.testing.assert_array_equal(seq.prediction, np.where(true > 0, 0, 1))
    # The whole grid (1.5 sigma) is certified, as CERTIFY does at n = 1e5 (p_A >= Phi(2.5) gives >= 2.4 sigma).
    assert np.all(seq.radius >= GRID[-1])


def test_batches_equal_single_images_and_draws_are_certify_prefixes():
    params, images, _ = linear2_problem(np.array([0.02, -0.2, 0.4, 0.7, 1.0]))
    kw = dict(apply_fn=linear2, sigma=SIGMA, radii=GRID, alpha=0.01, n0=30, max_samples=3000, batch_size=100,
              num_classes=2)
    keys = jax.random.split(jax.random.key(4), 5)
    batch = jax.jit(functools.partial(C.certify_sequential, **kw))(keys, variables=params, x=images)
    assert len(set(np.asarray(batch.num_samples).tolist())) > 1  # images stopped at different times
    single = jax.jit(functools.partial(C.certify_sequential, **kw))
    for i in range(5):
        one = single(keys[i], variables=params, x=images[i])
        for name in batch._fields:
            np.testing.assert_array_equal(getattr(batch, name)[i], getattr(one, name), err_msg=name)
    # Same key conventions as certify: the estimation draws are the first t draws of certify's stream.
    key_est = jax.random.split(keys[3])[1]
    counts = C.sample_counts(key_est, linear2, params, images[3], sigma=SIGMA, num=int(batch.num_samples[3]) - 30,
                             batch_size=100, num_classes=2)
    assert int(counts[int(batch.guess[3])]) == int(batch.count[3])


# ------------------------------------------------------------------------------------------------ futility rules
def _projected_table_by_brute_force(checks, s_lower, level):
    """The projected futility table from its definition: every failure count tried, SciPy's Beta quantile."""
    K, G = s_lower.shape
    table = np.full((K + 1, G), -1)
    table[0] = np.max(checks[:, None] - s_lower, axis=0)
    for k in range(K - 1):
        for g in range(G):
            for f in range(checks[k] + 1):
                rate = st.beta.ppf(level, f, checks[k] - f + 1) if f else 0.0
                if any(f + rate * (checks[j] - checks[k]) <= checks[j] - s_lower[j, g] for j in (k + 1, K - 1)):
                    table[k + 1, g] = f
    return table


def test_projected_futility_table_matches_its_definition():
    checks = np.arange(1, 13) * 25
    s_lower, _ = cs.decision_tables("betting", 0.01, checks, st.norm.cdf(np.array([0.0, 0.5, 1.0, 2.0])))
    for level in (0.05, 0.3):
        np.testing.assert_array_equal(S.projected_failures_table(checks, s_lower, level),
                                      _projected_table_by_brute_force(checks, s_lower, level))


def _stopping_rule_by_hand(cum_hits, checks, s_lower, s_upper, projected):
    """Independent NumPy re-derivation of the loop: (stopping check index, settled radii) for one hit path."""
    K, G = s_lower.shape
    settled, ceiling = 0, int(np.sum(np.max(checks[:, None] - s_lower, axis=0) >= 0))
    for k in range(K):
        hits, fails = cum_hits[k], checks[k] - cum_hits[k]
        settled = max(settled, int(np.sum(hits >= s_lower[k])))
        impossible = [g for g in range(G) if hits <= s_upper[k, g]  # ruled out by the upper bound
                      or not any(fails <= checks[j] - s_lower[j, g] for j in range(k + 1, K))  # unreachable
                      or (projected is not None and fails > projected[k + 1, g])]  # implausible
        ceiling = min(ceiling, min(impossible, default=G))
        if settled >= ceiling:
            return k, settled
    return K - 1, settled


@pytest.mark.parametrize("futility", S.FUTILITY_RULES)
def test_stopping_time_equals_an_independent_rederivation(futility):
    # p_A = Phi(0.98) just below the 1-sigma threshold Phi(1): the exact rule keeps drawing (its upper bound cannot
    # rule 1 sigma out within the budget); the projected rule gives up once the miss rate is plausibly too high.
    params, images, _ = linear2_problem(np.array([0.49, -0.49]))
    alpha, level, batch, max_samples, n0 = 0.001, 0.05, 200, 20_000, 20
    kw = dict(apply_fn=linear2, sigma=SIGMA, radii=GRID, alpha=alpha, n0=n0, max_samples=max_samples,
              batch_size=batch, num_classes=2)
    keys = jax.random.split(jax.random.key(7), 2)
    cert = jax.jit(functools.partial(C.certify_sequential, futility=futility, futility_level=level, **kw))(
        keys, variables=params, x=images)
    checks = np.arange(1, max_samples // batch + 1) * batch
    grid_p = np.nextafter(st.norm.cdf(np.asarray(GRID) / SIGMA), 1.0)
    s_lower, s_upper = cs.decision_tables("betting", alpha, checks, grid_p)
    # The table itself is checked against its definition above (brute force is too slow at this size).
    projected = S.projected_failures_table(checks, s_lower, level) if futility == "projected" else None
    for i in range(2):
        key_est = jax.random.split(keys[i])[1]  # the estimation stream, batch by batch
        per_batch = jax.vmap(lambda j: _sampling.chunk_counts(key_est, j, images[i], linear2, params, SIGMA, batch,
                                                       max_samples, 2))(jnp.arange(len(checks)))
        cum = np.cumsum(np.asarray(per_batch)[:, int(cert.guess[i])])
        stop, settled = _stopping_rule_by_hand(cum, checks, s_lower, s_upper, projected)
        assert int(cert.num_samples[i]) == n0 + checks[stop] and int(cert.count[i]) == cum[stop]
        assert settled == 4 and GRID[3] <= float(cert.radius[i]) < GRID[4]  # 0.75 sigma certified, 1 sigma not
    if futility == "exact":
        assert np.all(cert.num_samples >= n0 + 0.8 * max_samples)
    else:
        assert np.all(cert.num_samples <= n0 + max_samples // 4)


def test_projected_futility_never_certifies_more_often_than_alpha():
    # Type-1 error of the whole stopping rule on Bernoulli(p) streams, p just below a grid threshold: a radius
    # above the truth is certified in at most an alpha fraction of 1e5 runs (the CS's guarantee, any stopping).
    alpha, runs, batch, sigma, radii = 0.05, 100_000, 20, 1.0, (0.0, 0.5, 1.0, 2.0)
    tables, grid_p = S._plan("betting", alpha, sigma, radii, batch, 1000, 0.0, "projected", 0.2)
    checks, s_lower, s_upper, fail_max = (tables[k].astype(np.int64) for k in ("checks", "s_lower", "s_upper",
                                                                              "fail_max"))
    rng = np.random.default_rng(11)
    for g, p in ((1, grid_p[1] - 0.003), (2, grid_p[2] - 0.002), (3, grid_p[3] - 0.001)):
        cum = np.cumsum(rng.binomial(batch, p, size=(runs, len(checks))), axis=1)
        settled, ceiling = np.zeros(runs, np.int64), np.full(runs, np.sum(fail_max[0] >= 0))
        for k in range(len(checks)):
            active = settled < ceiling
            settled = np.where(active, np.maximum(settled, np.sum(cum[:, k, None] >= s_lower[k], 1)), settled)
            limit = np.minimum(len(radii) - np.sum(cum[:, k, None] <= s_upper[k], 1),
                               np.sum(checks[k] - cum[:, k, None] <= fail_max[k + 1], 1))
            ceiling = np.where(active, np.minimum(ceiling, limit), ceiling)
        assert np.mean(settled > g) <= alpha + 4 * np.sqrt(alpha * (1 - alpha) / runs)
        assert np.mean(settled == g) > 0.5  # and it does certify the radius below the truth


@pytest.mark.parametrize("kwargs", [dict(radii=[]), dict(radii=[0.5, 0.25]), dict(radii=[-0.1, 0.2]),
                                    dict(radii=[0.0, float("inf")]), dict(method="bonferroni"),
                                    dict(max_samples=0), dict(alpha=1.0), dict(futility="never"),
                                    dict(futility_level=0.0)])
def test_bad_input_raises(kwargs):
    args = dict(apply_fn=linear2, sigma=SIGMA, radii=GRID, num_classes=2, batch_size=10) | kwargs
    with pytest.raises(ValueError, match="not allowed"):
        C.certify_sequential(jax.random.key(0), variables=None, x=jnp.zeros((4, 4, 1)), **args)


def test_four_devices_give_the_same_results_as_one():
    try:
        from conftest import subprocess_env
    except ImportError:  # pragma: no cover
        pytest.skip("conftest not importable")
    sys.path.insert(0, str(HERE))
    import _sequential_devices_worker as worker

    proc = subprocess.run([sys.executable, str(HERE / "_sequential_devices_worker.py")], env=subprocess_env(4),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["input_shards"] == 4
    local = worker.run(*worker.problem())
    for name, values in local._asdict().items():
        np.testing.assert_array_equal(out["cert"][name], np.asarray(values), err_msg=name)
