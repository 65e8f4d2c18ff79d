"""Tests of smoothjax.certification.sound_noise (exact grid noise) and of sound=True in certification, against SciPy
closed forms."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats as st

from smoothjax import certification as C
from smoothjax.certification import sound_noise as S


@pytest.mark.parametrize("sigma", [0.02, 0.25, 1.0])
def test_cell_masses_are_the_gaussian_cell_probabilities(sigma):
    offsets, masses, tail, error = S.cell_masses(sigma, int(8 * 255 * sigma) + 3)
    edges = (offsets[:, None] + np.array([-0.5, 0.5])) / (255 * sigma)
    oracle = st.norm.cdf(edges[:, 1]) - st.norm.cdf(edges[:, 0])  # plain cdf differences in float64
    np.testing.assert_allclose(masses, oracle, rtol=1e-9, atol=2e-16)
    np.testing.assert_allclose(masses, masses[::-1], rtol=0)  # symmetric
    assert abs(masses.sum() + tail - 1.0) < 1e-12 and tail == pytest.approx(2 * st.norm.sf(edges[-1, 1]))
    assert 0 < error < 1e-10


@pytest.mark.parametrize("sigma", [0.12, 0.5])
def test_integer_table_reproduces_the_masses_to_64_bits(sigma):
    table = S.grid_noise_table(sigma)
    cum = (table.cum_hi.astype(object) << 32) + table.cum_lo.astype(object)
    weights = np.diff(np.concatenate([[0], cum])).astype(np.float64)
    assert np.all(np.abs(weights / 2.0**64 - table.masses) <= 2.0**-64 + 1e-16 * table.masses)
    assert np.all(np.diff(cum.astype(float)) >= 0)
    sampled = weights / float(cum[-1])
    assert 0.5 * np.abs(sampled - table.masses).sum() <= table.tv_bound < 1e-11
    assert S.certification_slack(sigma, 3072) == pytest.approx(3072 * table.tv_bound)


def _chi_square_pvalue(steps, sigma):
    offsets, masses, _, _ = S.cell_masses(sigma, int(12 * 255 * sigma) + 3)
    counts = np.array([np.sum(steps == j) for j in offsets])
    expected = masses * steps.size
    keep = expected >= 5  # pool the two tails into one cell each
    pooled_obs = np.concatenate([counts[keep], [counts[~keep & (offsets < 0)].sum(),
                                                counts[~keep & (offsets > 0)].sum()]])
    pooled_exp = np.concatenate([expected[keep], [expected[~keep & (offsets < 0)].sum(),
                                                  expected[~keep & (offsets > 0)].sum()]])
    assert pooled_obs.sum() == steps.size
    return st.chisquare(pooled_obs, pooled_exp * steps.size / pooled_exp.sum()).pvalue


def test_sampler_matches_the_exact_cell_masses_chi_square():
    sigma = 0.03  # about 7.7 grid steps per sigma: ~50 cells with expected counts >= 5
    steps = np.asarray(jax.jit(lambda k: S.grid_noise_steps(k, (400, 500), sigma))(jax.random.key(0))).ravel()
    assert _chi_square_pvalue(steps, sigma) > 1e-3
    # The test has power: the same draws are rejected against the masses of a 3% larger sigma, and float Gaussian
    # noise rounded to the grid passes (it has the same cell masses up to float error).
    assert _chi_square_pvalue(steps, sigma * 1.03) < 1e-6
    rounded = np.round(255 * sigma * np.asarray(jax.random.normal(jax.random.key(1), (200_000,)), np.float64))
    assert _chi_square_pvalue(rounded.astype(int), sigma) > 1e-3


def test_rejected_draws_are_redrawn():
    # Force rejection: a table whose cells cover only half the mass (the rest is the "remainder").
    table = S.grid_noise_table(0.05)
    half = len(table.offsets) // 2
    hi, lo = jnp.asarray(table.cum_hi[: half + 1]), jnp.asarray(table.cum_lo[: half + 1])
    bits = jax.random.bits(jax.random.key(3), (10_000, 2), jnp.uint32)
    index = np.asarray(jax.jit(S._invert)(bits[:, 0], bits[:, 1], hi, lo))
    assert 0.45 < np.mean(index == half + 1) < 0.55  # about half would be rejected and redrawn
    cum = (table.cum_hi.astype(object) << 32) + table.cum_lo.astype(object)
    u = (np.asarray(bits[:, 0]).astype(object) << 32) + np.asarray(bits[:, 1]).astype(object)
    np.testing.assert_array_equal(index, [sum(c <= v for c in cum[: half + 1]) for v in u[:200]] + list(index[200:]))


def test_sound_copies_are_exact_grid_points_independent_of_chunking():
    x = jnp.asarray(np.arange(12).reshape(2, 2, 3) * 20 / 255.0, jnp.float32)
    key = jax.random.key(5)
    copies = jax.jit(S.sound_noisy_copies, static_argnums=(3, 4))
    whole = copies(key, x, 0, 10, 0.25)
    parts = jnp.concatenate([copies(key, x, 0, 5, 0.25), copies(key, x, 5, 5, 0.25)])
    np.testing.assert_array_equal(whole, parts)
    # Each value is a fixed function of its integer level (k + j): within one float32 ulp of (k + j) / 255, and
    # equal levels give bit-equal floats wherever they occur.
    values = np.asarray(whole).ravel()
    levels = np.round(values.astype(np.float64) * 255).astype(np.int64)
    np.testing.assert_allclose(values, levels / 255.0, rtol=1.2e-7, atol=0)
    for level in np.unique(levels):
        assert len(set(values[levels == level].tolist())) == 1
    steps = levels.reshape(whole.shape) - np.round(np.asarray(x, np.float64) * 255).astype(np.int64)[None]
    assert 0.2 < np.std(steps) / (255 * 0.25) < 2.0  # noise of the right scale, in whole grid steps
    with pytest.raises(ValueError, match="1/255 grid"):
        C.sample_counts(key, lambda v, z: jnp.zeros((z.shape[0], 2)), None, x + 0.001, sigma=0.25, num=4,
                        batch_size=4, num_classes=2, sound=True)


def axis_classifier(threshold, images):
    """Class 0 iff 255 * pixel 0 > threshold + 1/2 (threshold an integer): on grid inputs h is a half-space."""
    z = images.reshape(images.shape[0], -1)[:, 0] * 255 - (threshold + 0.5)
    return jnp.stack([z, -z], axis=-1)


def test_sound_certify_on_a_half_space_matches_the_closed_form():
    # h(z) = [Q(z_0) > T / 255] = [z_0 > (T + 1/2) / 255] exactly, so the sound smoothed classifier is linear with
    # p_A = Phi(d / sigma) and robust radius d = |k - T - 1/2| / 255 for an image with level k in pixel 0.
    sigma, threshold, n = 0.25, 127, 4000
    levels = np.array([160, 90, 180, 60, 128, 127])
    images = np.full((6, 4, 4, 1), 128 / 255, np.float32)
    images[:, 0, 0, 0] = levels / 255.0
    distance = np.abs(levels - threshold - 0.5) / 255
    kw = dict(apply_fn=axis_classifier, sigma=sigma, batch_size=500, num_classes=2, sound=True)
    counts = jax.jit(functools.partial(C.sample_counts, num=n, **kw))(jax.random.key(8), variables=threshold,
                                                                        x=jnp.asarray(images))
    p_class0 = st.norm.sf((threshold + 0.5 - levels) / (255 * sigma))
    pvalues = [st.binomtest(int(c), n, p).pvalue for c, p in zip(np.asarray(counts)[:, 0], p_class0)]
    assert min(pvalues) > 1e-4, pvalues
    other = C.sample_counts(jax.random.key(8), variables=threshold, x=jnp.asarray(images), num=n,
                            **(kw | dict(batch_size=300)))
    np.testing.assert_array_equal(other, counts)  # sound draws do not depend on the batch size
    cert = jax.jit(functools.partial(C.certify, n0=50, n=n, alpha=0.001, **kw))(jax.random.key(9), variables=threshold,
                                                                                   x=jnp.asarray(images))
    truth = np.where(levels > threshold, 0, 1)
    ok = cert.prediction == -1
    assert np.all(ok | ((cert.prediction == truth) & (cert.radius <= distance)))
    assert np.sum(~ok) >= 4
    seq = jax.jit(functools.partial(C.certify_sequential, n0=50, max_samples=n, alpha=0.001, radii=(0.0, 0.05, 0.1),
                                    **kw))(jax.random.key(9), variables=threshold, x=jnp.asarray(images))
    ok = seq.prediction == -1
    assert np.all(ok | ((seq.prediction == truth) & (seq.radius <= distance)))
