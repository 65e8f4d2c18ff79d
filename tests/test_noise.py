"""Noise sampling: shapes, moments against the closed-form N(0, sigma^2), independence, determinism, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from smoothjax import noise


def test_gaussian_noise_matches_normal_distribution():
    z = np.asarray(noise.gaussian_noise(jax.random.key(0), (200_000,), 0.5))
    assert z.shape == (200_000,) and z.dtype == np.float32
    # Kolmogorov-Smirnov against N(0, 0.5^2): a wrong scale (e.g. variance instead of std) fails at once.
    assert stats.kstest(z, stats.norm(scale=0.5).cdf).pvalue > 1e-3
    assert abs(z.std() - 0.5) < 0.005


def test_sigma_zero_is_exactly_zero_and_keys_determine_draws():
    assert not np.any(np.asarray(noise.gaussian_noise(jax.random.key(1), (4, 4), 0.0)))
    a = noise.gaussian_noise(jax.random.key(2), (8,), 1.0)
    b = noise.gaussian_noise(jax.random.key(2), (8,), 1.0)
    c = noise.gaussian_noise(jax.random.key(3), (8,), 1.0)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_noisy_copies_shape_independence_and_no_clipping():
    x = jnp.full((3, 16, 16, 2), 0.9, jnp.float32)
    out = np.asarray(noise.noisy_copies(jax.random.key(0), x, 1.0, 5))
    assert out.shape == (5, 3, 16, 16, 2)
    delta = out - 0.9
    assert out.max() > 1.0 and out.min() < 0.0  # pixel space, not clipped (as in the reference)
    flat = delta.reshape(5, -1)
    corr = np.corrcoef(flat)
    assert np.all(np.abs(corr[~np.eye(5, dtype=bool)]) < 0.15)  # copies are independent draws


def test_noisy_copies_under_jit_and_vmap_shape():
    f = jax.jit(lambda k, x: noise.noisy_copies(k, x, 0.25, 3))
    assert f(jax.random.key(0), jnp.zeros((2, 8, 8, 1))).shape == (3, 2, 8, 8, 1)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "x"])
def test_bad_sigma_one_line_error(bad):
    with pytest.raises(ValueError, match="sigma") as e:
        noise.gaussian_noise(jax.random.key(0), (2,), bad)
    assert "\n" not in str(e.value)


def test_bad_num_copies():
    with pytest.raises(ValueError, match="num_copies=0"):
        noise.noisy_copies(jax.random.key(0), jnp.zeros((1, 2, 2, 1)), 0.1, 0)
