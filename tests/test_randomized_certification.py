"""Tests of smoothjax.certification.randomized against SciPy and simulation on a classifier with a known p_A."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.stats as st

from smoothjax import certification as C
from smoothjax.certification import randomized as R
from smoothjax.noise import UNIFORM_STREAM

SIGMA = 0.5


def linear2(w, images):
    z = images.reshape(images.shape[0], -1) @ w
    return jnp.stack([z, -z], axis=-1)


def problem(margin, count, seed=0):
    """``count`` copies of an image at signed distance ``margin`` from a hyperplane through the origin (16 pixels)."""
    w = np.random.default_rng(seed).normal(size=16)
    w = (w / np.linalg.norm(w)).astype(np.float32)
    image = (margin * w).astype(np.float32).reshape(4, 4, 1)
    return jnp.asarray(w), jnp.asarray(np.broadcast_to(image, (count, 4, 4, 1)))


def test_uniform_from_bits_edges_and_order():
    u = R.uniform_from_bits(np.array([0, 0, 2**31, 2**32 - 1], np.uint32), np.array([0, 2**11, 0, 2**32 - 1],
                                                                                   np.uint32))
    np.testing.assert_array_equal(u, [2.0**-53, 2 * 2.0**-53, 0.5 + 2.0**-53, 1.0])


def test_coverage_is_exact_where_clopper_pearson_is_conservative():
    # p_A = Phi(margin / sigma) = 0.8 exactly (for the true Gaussian); n = 30 as in the bound's own test.
    alpha, n, runs = 0.1, 30, 4000
    margin = SIGMA * st.norm.ppf(0.8)
    w, images = problem(margin, runs)
    kw = dict(apply_fn=linear2, sigma=SIGMA, n0=10, n=n, alpha=alpha, batch_size=n, num_classes=2)
    keys = jax.random.split(jax.random.key(7), runs)
    rand = jax.jit(functools.partial(R.certify_randomized, **kw))(keys, variables=w, x=images)
    det = jax.jit(functools.partial(C.certify, **kw))(keys, variables=w, x=images)
    np.testing.assert_array_equal(rand.count, det.count)  # the same draws as certify for the same keys
    np.testing.assert_array_equal(rand.guess, det.guess)
    assert np.mean(rand.guess == 0) > 0.98
    too_high = lambda c: np.mean((c.guess == 0) & (np.asarray(c.p_a_lower, np.float64) > 0.8))
    tolerance = 4 * np.sqrt(alpha * (1 - alpha) / runs)
    assert abs(too_high(rand) - alpha * np.mean(rand.guess == 0)) < tolerance  # exact, not merely <= alpha
    assert too_high(det) < alpha - 0.02
    wrong = (rand.prediction != -1) & ((rand.prediction != 0) | (rand.radius > margin))
    assert np.mean(wrong) <= alpha + tolerance


def test_bound_inverts_the_randomized_binomial_test():
    alpha, n = 0.01, 200
    w, images = problem(0.6, 6)
    keys = jax.random.split(jax.random.key(3), 6)
    cert = R.certify_randomized(keys, linear2, w, images, sigma=SIGMA, n0=20, n=n, alpha=alpha, batch_size=100,
                                num_classes=2)
    for i in range(6):
        hi, lo = (int(b) for b in jax.random.bits(jax.random.fold_in(keys[i], UNIFORM_STREAM), (2,), jnp.uint32))
        u = ((((hi << 32) | lo) >> 11) + 1) / 2.0**53
        s = int(cert.count[i])
        assert 0 < s < n
        pvalue = lambda m: st.binom.sf(s, n, m) + u * st.binom.pmf(s, n, m) - alpha
        exact = scipy.optimize.brentq(pvalue, 1e-12, 1 - 1e-12, xtol=1e-14)
        assert float(cert.p_a_lower[i]) <= exact and exact - float(cert.p_a_lower[i]) < 1e-6
        assert float(cert.radius[i]) == pytest.approx(SIGMA * st.norm.ppf(exact), abs=1e-5)


def test_no_alpha_to_the_one_over_n_cap():
    # Every draw hits: CERTIFY's bound is alpha^(1/n); the randomized one is 1 (radius inf) exactly when u <= alpha.
    alpha, n, runs = 0.5, 20, 64
    always = lambda v, images: jnp.broadcast_to(jax.nn.one_hot(1, 3), (images.shape[0], 3)) + 0 * v
    keys = jax.random.split(jax.random.key(0), runs)
    kw = dict(sigma=SIGMA, n0=5, n=n, alpha=alpha, batch_size=n, num_classes=3)
    cert = R.certify_randomized(keys, always, jnp.float32(0), jnp.zeros((runs, 2, 2, 1)), **kw)
    bits = np.asarray(R.uniform_bits(keys))
    u = R.uniform_from_bits(bits[:, 0], bits[:, 1])
    np.testing.assert_array_equal(np.isinf(cert.radius), u <= alpha * (1 - 1e-9))
    assert 0 < np.sum(np.isinf(cert.radius)) < runs
    det = C.certify(keys, always, jnp.float32(0), jnp.zeros((runs, 2, 2, 1)), **kw)
    assert np.all(np.isfinite(det.radius)) and np.all(det.p_a_lower <= alpha ** (1 / n))
    finite = ~np.isinf(cert.radius)
    assert np.all(cert.radius[finite] > 0) and np.all(cert.prediction == 1)
