"""Tests of smoothjax.certification against SciPy, closed forms and the numbers of Cohen et al. (2019)."""

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
import scipy.stats as st

from smoothjax import certification as C

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------------ tiny models
def linear2(params, images):
    """2 classes: logits (z, -z) with z = w . x + b; class 0 iff z > 0. With |w| = 1, z is the signed distance."""
    w, b = params
    z = images.reshape(images.shape[0], -1) @ w + b
    return jnp.stack([z, -z], axis=-1)


def linear3(weights, images):
    return images.reshape(images.shape[0], -1) @ weights


def linear2_problem(margins, seed=0, dim=16):
    """Images (B, 4, 4, 1) around 0.5 whose signed distances to the hyperplane are ``margins`` (float64)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=dim)
    w /= np.linalg.norm(w)
    w32 = w.astype(np.float32)
    b32 = np.float32(-0.5 * w32.sum())
    images = (0.5 + np.asarray(margins)[:, None] * w32[None, :]).astype(np.float32)
    true_margin = images.astype(np.float64) @ w32.astype(np.float64) + np.float64(b32)
    true_margin /= np.linalg.norm(w32.astype(np.float64))
    return (jnp.asarray(w32), jnp.asarray(b32)), jnp.asarray(images.reshape(-1, 4, 4, 1)), true_margin


@pytest.fixture(scope="module")
def model3():
    rng = np.random.default_rng(7)
    weights = jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)
    images = jnp.asarray(rng.uniform(size=(5, 4, 4, 1)), jnp.float32)
    return weights, images


# ------------------------------------------------------------------------------------- oracles of the paper
@pytest.mark.parametrize("n_a,n,radius", [(100_000, 100_000, 3.811457), (99_000, 100_000, 2.290000),
                                          (60_000, 100_000, 0.240945), (50_000, 100_000, None),
                                          (100, 100, 1.500475)])
def test_certify_from_counts_matches_paper_numbers(n_a, n, radius):
    est = jnp.array([n - n_a, n_a, 0])  # Class 1 is the guess from the selection counts below.
    cert = C.certify_from_counts(jnp.array([3, 90, 7]), est, sigma=1.0, alpha=0.001)
    assert int(cert.guess) == 1 and int(cert.count) == n_a
    p64 = st.beta.ppf(0.001, n_a, n - n_a + 1)
    assert float(cert.p_a_lower) <= p64 and p64 - float(cert.p_a_lower) < 1e-7
    if radius is None:
        assert int(cert.prediction) == -1 and float(cert.radius) == 0.0
    else:
        assert int(cert.prediction) == 1
        assert abs(float(cert.radius) - radius) < 1e-6
        assert float(cert.radius) <= st.norm.ppf(p64)  # Rounded down from the float64 radius.


def test_certify_from_counts_batched_and_jitted():
    n_a = np.array([100_000, 99_000, 60_000, 50_000, 49_000])
    est = np.stack([n_a, 100_000 - n_a], axis=-1)
    sel = np.tile([[60, 40]], (5, 1))
    cert = jax.jit(functools.partial(C.certify_from_counts, sigma=0.5, alpha=0.001))(sel, est)
    np.testing.assert_array_equal(cert.prediction, [0, 0, 0, -1, -1])
    expected = np.where(n_a > 50_000, 0.5 * st.norm.ppf(st.beta.ppf(0.001, n_a, 100_000 - n_a + 1)), 0.0)
    np.testing.assert_allclose(cert.radius, expected, rtol=1e-6, atol=1e-7)
    # Selection picks class 1 instead: the estimation counts of class 1 are then what matters.
    cert1 = C.certify_from_counts(np.tile([[40, 60]], (5, 1)), est, sigma=0.5, alpha=0.001)
    np.testing.assert_array_equal(cert1.count, 100_000 - n_a)
    np.testing.assert_array_equal(cert1.prediction, [-1, -1, -1, -1, 1])


@pytest.mark.parametrize("counts,expected", [((510, 490), -1), ((560, 440), 0), ((10, 0), -1), ((12, 0), 0),
                                             ((440, 560), 1), ((0, 12), 1), ((3, 30, 0), 1), ((3, 12, 0), -1),
                                             ((0, 10, 2), -1)])
def test_predict_from_counts_matches_paper_numbers(counts, expected):
    assert int(C.predict_from_counts(jnp.array(counts), 0.001)) == expected


def test_predict_from_counts_batched_jitted_and_decided_in_float64():
    counts = np.array([[510, 490], [560, 440], [10, 0], [12, 0], [7, 7]])
    out = jax.jit(lambda c: C.predict_from_counts(c, 0.001))(counts)
    np.testing.assert_array_equal(out, [-1, 0, -1, 0, -1])
    # p-value of (10, 0) is exactly 2**-9: the boundary alpha = 2**-9 predicts (p <= alpha), one ulp lower abstains.
    assert int(C.predict_from_counts(jnp.array([10, 0]), 2.0**-9)) == 0
    assert int(C.predict_from_counts(jnp.array([10, 0]), np.nextafter(2.0**-9, 0))) == -1


# ------------------------------------------------------------------------------ Clopper-Pearson lower bound
def _grid():
    rng = np.random.default_rng(0)
    pairs = []
    for n in [1, 2, 3, 10, 100, 1000, 10_000, 100_000, 1_000_000, 10_000_000]:
        ks = {1, 2, n // 2, n - 1, n, *rng.integers(1, n + 1, size=6).tolist()}
        pairs += [(k, n) for k in sorted(ks) if 1 <= k <= n]
    return np.array(pairs).T


@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_lower_bound_is_sound_and_tight_against_scipy(alpha):
    n_a, n = _grid()
    ours = np.asarray(C.lower_confidence_bound(n_a, n, alpha)).astype(np.float64)
    ref = st.beta.ppf(alpha, n_a, n - n_a + 1)
    assert np.all(ours <= ref), (n_a[ours > ref], n[ours > ref])
    assert np.max(ref - ours) <= 1e-6
    # Independent of beta.ppf: the defining equation P[Bin(n, p) >= n_a] = alpha, which increases in p.
    assert np.all(st.binom.sf(n_a - 1, n, ours) <= alpha * (1 + 1e-6))
    assert np.all(st.binom.sf(n_a - 1, n, np.minimum(ours + 1e-6, 1.0)) > alpha)


def test_lower_bound_is_zero_without_successes():
    np.testing.assert_array_equal(C.lower_confidence_bound(np.zeros(3, int), np.array([1, 100, 10**7]), 0.001), 0.0)


def test_lower_bound_rounds_down_where_float32_would_round_up():
    n = np.arange(1000, 200_000, 97)
    n_a = n - n // 50
    ref = st.beta.ppf(0.001, n_a, n - n_a + 1)
    up = ref.astype(np.float32).astype(np.float64) > ref
    assert 100 < up.sum() < up.size  # Both directions of float32 rounding occur in this grid.
    ours = np.asarray(C.lower_confidence_bound(n_a, n, 0.001))
    assert np.all(ours.astype(np.float64) <= ref)
    np.testing.assert_array_equal(ours[up], np.nextafter(ref[up].astype(np.float32), np.float32(0)))
    np.testing.assert_array_equal(ours[~up], ref[~up].astype(np.float32))


def test_lower_bound_broadcasts_and_works_under_jit_and_vmap():
    n_a, n = np.array([[0], [5], [9]]), np.array([10, 20, 40, 80])
    ref = np.where(n_a > 0, st.beta.ppf(0.01, np.maximum(n_a, 1), n - n_a + 1), 0.0)
    out = jax.jit(lambda a, t: C.lower_confidence_bound(a, t, 0.01))(n_a, n)
    assert out.shape == (3, 4) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    over_a = jax.jit(jax.vmap(lambda a: C.lower_confidence_bound(a, 40, 0.01)))(jnp.arange(1, 6))
    np.testing.assert_allclose(over_a, st.beta.ppf(0.01, np.arange(1, 6), 40 - np.arange(1, 6) + 1), rtol=1e-6)
    over_n = jax.vmap(lambda t: C.lower_confidence_bound(jnp.int32(5), t, 0.01))(jnp.arange(5, 10))
    np.testing.assert_allclose(over_n, st.beta.ppf(0.01, 5, np.arange(5, 10) - 4), rtol=1e-6)


# ----------------------------------------------------------------------------------------- binomial test
def test_binomial_pvalue_matches_scipy_binomtest():
    pairs = [(k, n) for n in range(1, 31) for k in range(n + 1)]
    pairs += [(k, n) for n in [99, 100, 1000, 12_345, 100_000] for k in [0, 1, n // 3, n // 2 - 1, n // 2, n // 2 + 1,
                                                                         n - 10, n]]
    k, n = np.array(pairs).T
    ours = np.asarray(jax.jit(C.binomial_test_pvalue)(k, n)).astype(np.float64)
    ref = np.array([st.binomtest(int(a), int(b), 0.5).pvalue for a, b in pairs])
    np.testing.assert_allclose(ours, ref, rtol=2e-7, atol=1e-37)  # float32 subnormals below ~1e-38.
    assert np.all(ours >= ref * (1 - 1e-12))  # Rounded up: never less significant than float64.


# -------------------------------------------------------------------------------------------- radius
def test_certified_radius_matches_float64_normal_quantile():
    p = np.concatenate([np.linspace(0.5, 0.99, 50), 1 - 2.0 ** -np.arange(7, 24)]).astype(np.float32)
    ref = 0.25 * st.norm.ppf(p.astype(np.float64))
    ours = np.asarray(jax.jit(lambda q: C.certified_radius(q, 0.25))(p)).astype(np.float64)
    assert np.all(ours <= ref)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(jax.vmap(lambda q: C.certified_radius(q, 1.0))(p[:, None])[:, 0],
                               st.norm.ppf(p.astype(np.float64)), rtol=1e-6, atol=1e-12)


# -------------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("num,batch_size", [(1, 64), (64, 64), (65, 64), (1000, 64), (10, 1000)])
def test_sample_counts_draws_exactly_num(model3, num, batch_size):
    weights, images = model3
    run = jax.jit(functools.partial(C.sample_counts, apply_fn=linear3, sigma=0.3, num=num, batch_size=batch_size,
                                    num_classes=3))
    many = run(jax.random.key(1), variables=weights, x=images)
    assert many.shape == (5, 3) and many.dtype == jnp.int32
    np.testing.assert_array_equal(many.sum(axis=1), num)
    if num == 65:
        one = run(jax.random.key(1), variables=weights, x=images[0])
        assert one.shape == (3,) and int(one.sum()) == num


def test_sample_counts_of_a_batch_equal_per_image_calls(model3):
    weights, images = model3
    run = jax.jit(functools.partial(C.sample_counts, apply_fn=linear3, sigma=0.5, num=300, batch_size=70,
                                    num_classes=3))
    key = jax.random.key(42)
    keys = jax.random.split(key, 5)
    single = np.stack([np.asarray(run(keys[i], variables=weights, x=images[i])) for i in range(5)])
    np.testing.assert_array_equal(run(key, variables=weights, x=images), single)
    np.testing.assert_array_equal(run(keys, variables=weights, x=images), single)
    assert len({tuple(r) for r in single.tolist()}) == 5  # Different images and keys: different counts.
    # Raw uint32 keys are the same keys as their typed wrapping.
    raw = jax.random.PRNGKey(42)
    np.testing.assert_array_equal(run(raw, variables=weights, x=images),
                                  run(jax.random.wrap_key_data(raw), variables=weights, x=images))
    # Eager (no jit) gives the same numbers.
    np.testing.assert_array_equal(C.sample_counts(key, linear3, weights, images, sigma=0.5, num=300, batch_size=70,
                                                  num_classes=3), single)


def test_sample_counts_follow_the_binomial_closed_form():
    sigma, num = 0.5, 500
    margins = np.linspace(-1.0, 1.0, 400)
    params, images, margin = linear2_problem(margins)
    counts = jax.jit(functools.partial(C.sample_counts, apply_fn=linear2, sigma=sigma, num=num, batch_size=96,
                                       num_classes=2))(jax.random.key(3), variables=params, x=images)
    p = st.norm.cdf(margin / sigma)  # P[class 0] = P[z + sigma N(0,1) > 0].
    c0 = np.asarray(counts[:, 0], np.float64)
    mean, var = num * p, num * p * (1 - p)
    assert abs(c0.sum() - mean.sum()) < 6 * np.sqrt(var.sum())
    chi2 = np.sum((c0 - mean) ** 2 / var)  # ~ chi-square with 400 degrees of freedom.
    assert st.chi2.sf(chi2, len(p)) > 1e-6 and st.chi2.cdf(chi2, len(p)) > 1e-6


# -------------------------------------------------------------------------------------- CERTIFY / PREDICT
def test_certify_and_predict_follow_the_key_conventions(model3):
    weights, images = model3
    common = dict(apply_fn=linear3, sigma=0.5, batch_size=64, num_classes=3)
    run_certify = jax.jit(functools.partial(C.certify, n0=40, n=500, alpha=0.01, **common))
    run_sel = jax.jit(functools.partial(C.sample_counts, num=40, **common))
    run_est = jax.jit(functools.partial(C.sample_counts, num=500, **common))
    key = jax.random.key(5)
    cert = run_certify(key, variables=weights, x=images)
    keys = jax.random.split(key, 5)
    for i in range(5):
        k_sel, k_est = jax.random.split(keys[i])
        ref = C.certify_from_counts(run_sel(k_sel, variables=weights, x=images[i]),
                                    run_est(k_est, variables=weights, x=images[i]), sigma=0.5, alpha=0.01)
        one = run_certify(keys[i], variables=weights, x=images[i])
        for got in (one, jax.tree.map(lambda a: a[i], cert)):
            for field in C.Certificate._fields:
                np.testing.assert_array_equal(getattr(got, field), getattr(ref, field), err_msg=field)
    pred = jax.jit(functools.partial(C.predict, n=500, alpha=0.01, **common))(keys, variables=weights, x=images)
    np.testing.assert_array_equal(pred, C.predict_from_counts(run_est(keys, variables=weights, x=images), 0.01))
    assert pred.dtype == jnp.int32 and cert.prediction.dtype == jnp.int32 and cert.radius.dtype == jnp.float32


def _failures(prediction, radius, true_class, true_radius):
    """Certificates that are wrong: a wrong class, or a radius beyond the exact robust radius."""
    certified = prediction >= 0
    return certified & ((prediction != true_class) | (radius > true_radius))


def test_certify_is_statistically_sound_on_a_linear_classifier():
    sigma, alpha, n = 0.5, 0.05, 1000
    margins = np.random.default_rng(11).uniform(-1.0, 1.0, size=2000)
    params, images, margin = linear2_problem(margins, seed=1)
    cert = jax.jit(functools.partial(C.certify, apply_fn=linear2, sigma=sigma, n0=50, n=n, alpha=alpha,
                                     batch_size=256, num_classes=2))(jax.random.key(9), variables=params, x=images)
    # Smoothed linear classifier: class sign(margin), exact robust radius |margin| = sigma Phi^-1(Phi(|m| / sigma)).
    true_class, true_radius = np.where(margin > 0, 0, 1), np.abs(margin)
    trials = len(margin)

    def rejected(failed):  # One-sided binomial test of P[failure] <= alpha at level 1e-6.
        return st.binom.sf(int(failed.sum()) - 1, trials, alpha) < 1e-6

    failed = _failures(np.asarray(cert.prediction), np.asarray(cert.radius, np.float64), true_class, true_radius)
    assert not rejected(failed), failed.sum()
    assert (np.asarray(cert.prediction) >= 0).sum() > trials // 2  # Non-trivial: most images are certified.
    # The same check rejects the point estimate n_A / n in place of the lower bound: the test has power.
    p_hat = np.asarray(cert.count) / n
    naive_pred = np.where(p_hat >= 0.5, np.asarray(cert.guess), -1)
    naive_radius = sigma * st.norm.ppf(np.clip(p_hat, 0.5, 1.0))
    assert rejected(_failures(naive_pred, naive_radius, true_class, true_radius))


def test_predict_agrees_with_the_smoothed_linear_classifier():
    sigma, alpha = 0.5, 0.01
    params, images, margin = linear2_problem(np.linspace(-1.0, 1.0, 500), seed=2)
    pred = np.asarray(jax.jit(functools.partial(C.predict, apply_fn=linear2, sigma=sigma, n=400, alpha=alpha,
                                                batch_size=128, num_classes=2))(jax.random.key(4), variables=params,
                                                                                 x=images))
    wrong = ((pred >= 0) & (pred != np.where(margin > 0, 0, 1))).sum()
    assert st.binom.sf(int(wrong) - 1, len(pred), alpha) > 1e-6, wrong
    assert (pred[np.abs(margin) > 0.4] >= 0).all()  # p_A >= Phi(0.8): 400 draws decide at alpha = 0.01.


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("call", [
    lambda: C.lower_confidence_bound(5, 4, 0.01),
    lambda: C.lower_confidence_bound(-1, 4, 0.01),
    lambda: C.lower_confidence_bound(1, 4, 0.0),
    lambda: C.lower_confidence_bound(1, 4, 1.5),
    lambda: C.binomial_test_pvalue(3, 2),
    lambda: C.certified_radius(0.9, 0.0),
    lambda: C.certify_from_counts(jnp.ones(3), jnp.ones(4), sigma=1.0, alpha=0.01),
    lambda: C.predict_from_counts(jnp.ones(1), 0.01),
])
def test_bad_statistics_input_raises(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("kwargs,x_shape,key_shape", [
    (dict(num=0), (4, 4, 1), ()), (dict(batch_size=0), (4, 4, 1), ()), (dict(num_classes=1), (4, 4, 1), ()),
    (dict(sigma=-0.1), (4, 4, 1), ()), (dict(num=2.5), (4, 4, 1), ()), ({}, (4, 4), ()),
    ({}, (2, 4, 4, 1), (3,)), ({}, (4, 4, 1), (2,)), (dict(num_classes=4), (4, 4, 1), ()),
])
def test_bad_sampling_input_raises(model3, kwargs, x_shape, key_shape):
    weights, _ = model3
    args = dict(sigma=0.5, num=10, batch_size=4, num_classes=3) | kwargs
    key = jax.random.split(jax.random.key(0), key_shape[0]) if key_shape else jax.random.key(0)
    with pytest.raises(ValueError):
        C.sample_counts(key, linear3, weights, jnp.zeros(x_shape), **args)


def test_certify_needs_positive_sigma(model3):
    with pytest.raises(ValueError, match="sigma"):
        C.certify(jax.random.key(0), linear3, model3[0], model3[1], sigma=0.0, n0=10, n=10, num_classes=3)


# ------------------------------------------------------------------------------------------ multi-device
@pytest.mark.slow
def test_four_devices_give_the_same_results_as_one():
    sys.path.insert(0, str(HERE))
    try:
        import _certify_devices_worker as worker
        from conftest import subprocess_env
    finally:
        sys.path.remove(str(HERE))
    proc = subprocess.run([sys.executable, str(HERE / "_certify_devices_worker.py")], env=subprocess_env(4),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["threefry_partitionable"] and out["input_shards"] == 4
    assert out["counts_devices"] == 4 and not out["counts_replicated"]  # Sampling stayed sharded.
    counts, cert = worker.run(*worker.problem())  # This process: one device.
    np.testing.assert_array_equal(out["counts"], counts)
    for field in C.Certificate._fields:
        np.testing.assert_array_equal(out["cert"][field], np.asarray(getattr(cert, field)), err_msg=field)
