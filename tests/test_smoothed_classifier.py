"""SmoothedClassifier against the module functions, alpha as an operand (no recompiles), ABSTAIN, __version__."""

import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import smoothjax
from smoothjax import certification as C

ROOT = Path(__file__).resolve().parents[1]


def linear_apply(weights, images):
    """A 3-class linear model on flattened (m, 4, 4, 1) images."""
    return images.reshape(images.shape[0], -1) @ weights


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(7)
    weights = jnp.asarray(rng.normal(size=(16, 3)).astype(np.float32))
    images = jnp.asarray(rng.uniform(size=(5, 4, 4, 1)).astype(np.float32))
    return weights, images


def test_version_and_abstain_and_py_typed():
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert smoothjax.__version__ == version
    assert smoothjax.ABSTAIN == C.ABSTAIN == -1
    assert (ROOT / "smoothjax" / "py.typed").is_file()
    assert smoothjax.SmoothedClassifier is C.SmoothedClassifier


def test_methods_equal_the_module_functions(problem):
    weights, images = problem
    key = jax.random.key(11)
    g = smoothjax.SmoothedClassifier(linear_apply, weights, sigma=0.5)
    common = dict(sigma=0.5, batch_size=40, num_classes=3)
    cert = g.certify(key, images, n0=20, n=300, alpha=0.01, batch_size=40)
    assert g.num_classes == 3  # from jax.eval_shape
    ref = C.certify(key, linear_apply, weights, images, n0=20, n=300, alpha=0.01, **common)
    assert isinstance(cert, C.Certificate)
    for field in C.Certificate._fields:
        np.testing.assert_array_equal(getattr(cert, field), getattr(ref, field), err_msg=field)
    assert np.any(np.asarray(cert.prediction) >= 0)  # something is certified, so the radii are compared too
    np.testing.assert_array_equal(g.predict(key, images, n=300, alpha=0.01, batch_size=40),
                                  C.predict(key, linear_apply, weights, images, n=300, alpha=0.01, **common))
    np.testing.assert_array_equal(g.sample_counts(key, images[0], num=100, batch_size=40),
                                  C.sample_counts(key, linear_apply, weights, images[0], num=100, **common))


def test_a_new_alpha_does_not_retrace_and_matches_scipy(problem):
    weights, images = problem
    traces = []

    def counted(w, x):
        traces.append(x.shape)  # runs only while tracing
        return linear_apply(w, x)

    g = smoothjax.SmoothedClassifier(counted, weights, sigma=0.5, num_classes=3)
    key = jax.random.key(3)
    first = g.certify(key, images, n0=20, n=300, alpha=0.001, batch_size=40)
    n_traces = len(traces)
    assert n_traces > 0
    for alpha in (0.01, 0.2):
        cert = g.certify(key, images, n0=20, n=300, alpha=alpha, batch_size=40)
        np.testing.assert_array_equal(cert.count, first.count)  # the same draws
        expected = scipy.stats.beta.ppf(alpha, np.asarray(cert.count), 300 - np.asarray(cert.count) + 1)
        assert np.all(np.asarray(cert.p_a_lower, np.float64) <= expected)
        np.testing.assert_allclose(cert.p_a_lower, expected, rtol=1e-6)
    assert len(traces) == n_traces  # alpha is an operand: no new trace, no new compile
    g.certify(key, images, n0=20, n=301, alpha=0.01, batch_size=40)
    assert len(traces) > n_traces  # static settings do retrace (the counter can fail)


def test_traced_alpha_under_jit_is_float32_alpha():
    counts = jnp.array([60, 90, 100])
    f = jax.jit(lambda a: C.lower_confidence_bound(counts, 100, a))
    np.testing.assert_array_equal(f(jnp.float32(0.05)), C.lower_confidence_bound(counts, 100, float(np.float32(0.05))))
    assert f._cache_size() == 1 and (f(jnp.float32(0.2)), f._cache_size())[1] == 1
    assert np.all(np.isnan(np.asarray(f(1.5))))  # outside (0, 1) under jit: NaN, not a silent bound


def test_num_classes_errors_name_the_value():
    with pytest.raises(ValueError, match="sigma=-1"):
        smoothjax.SmoothedClassifier(linear_apply, None, sigma=-1)
    g = smoothjax.SmoothedClassifier(lambda v, x: x.reshape(x.shape[0], -1)[:, :1], None, sigma=0.5)
    with pytest.raises(ValueError, match=r"output shape \(1, 1\)"):
        g.certify(jax.random.key(0), jnp.zeros((2, 4, 4, 1)), n0=1, n=1, alpha=0.1, batch_size=1)
    with pytest.raises(ValueError, match="alpha=1.5"):
        smoothjax.SmoothedClassifier(linear_apply, None, sigma=0.5, num_classes=3).certify(
            jax.random.key(0), jnp.zeros((2, 4, 4, 1)), n0=1, n=1, alpha=1.5, batch_size=1)


def test_metrics_take_a_certificate_or_arrays():
    from smoothjax import analysis

    prediction, radius = np.array([0, 1, -1, 2, 1]), np.array([0.5, 0.2, 0.0, 1.0, 0.3], np.float32)
    labels = np.array([0, 1, 1, 0, 1])
    cert = C.Certificate(jnp.asarray(prediction), jnp.asarray(radius), *(jnp.zeros(5),) * 3)
    # By hand: correct and certified are images 0, 1, 4 with radii 0.5, 0.2, 0.3 (of 5 images).
    expected = [3 / 5, 2 / 5, 1 / 5, 0.0]
    for result in (cert, (prediction, radius)):
        np.testing.assert_allclose(analysis.certified_accuracy(result, [0.0, 0.25, 0.4, 0.6], labels=labels), expected)
        assert analysis.average_certified_radius(result, labels=labels) == pytest.approx((0.5 + 0.2 + 0.3) / 5)
    with pytest.raises(ValueError, match="labels=None is not allowed"):
        analysis.certified_accuracy(cert, [0.0])
