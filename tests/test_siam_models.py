"""SIAM's stochastic models: PNI / CPNI weight-noise statistics against their closed forms, one weight draw per
pass shared by the batch, input noise per image, purity in the key, registration in get_model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smoothjax.models import get_model, make_stochastic_apply_fn
from smoothjax.models.noise_layers import NoisyDense, NoisyWeight

N_DRAWS = 4000


def _draws(module, params, w, n=N_DRAWS):
    keys = jax.random.split(jax.random.key(7), n)
    return np.asarray(jax.vmap(lambda k: module.apply({"params": params}, w, rngs={"noise": k}) - w)(keys),
                      np.float64)


@pytest.mark.parametrize("granularity", ["element", "channel", "layer"])
def test_pni_noise_std_is_alpha_times_std_w(granularity):
    w = jax.random.normal(jax.random.key(0), (3, 3, 2, 4)) * 0.7 + 0.1
    shape = {"element": w.shape, "channel": (4,), "layer": ()}[granularity]
    alpha = jax.random.uniform(jax.random.key(1), shape, minval=0.1, maxval=0.5)
    noise = _draws(NoisyWeight("pni", granularity), {"alpha": alpha}, w)
    want = np.broadcast_to(np.asarray(alpha) * np.std(np.asarray(w, np.float64), ddof=1), w.shape)
    ratio = noise.std(axis=0) / want
    # Std estimate from 4000 draws: relative s.e. 1/sqrt(2*4000) = 1.1%; 72 entries -> max within 5 s.e.
    assert np.max(np.abs(ratio - 1)) < 0.056, ratio
    assert abs(np.mean(ratio**2) - 1) < 0.01
    assert np.max(np.abs(noise.mean(axis=0)) / want) < 5 / np.sqrt(N_DRAWS)


def test_pni_default_alpha_is_a_quarter():
    w = jax.random.normal(jax.random.key(0), (3, 3, 2, 4))
    params = NoisyWeight("pni").init(jax.random.key(1), w)["params"]
    np.testing.assert_array_equal(np.asarray(params["alpha"]), np.full(w.shape, 0.25, np.float32))


def test_cpni_covariance_is_diag_plus_low_rank():
    w = jax.random.normal(jax.random.key(0), (1, 1, 2, 3)) * 2.0  # 6 weights
    d = jax.random.uniform(jax.random.key(1), (6,), minval=-0.3, maxval=0.5)  # |.| is taken: sign must not matter
    f = jax.random.normal(jax.random.key(2), (6, 2)) * 0.4
    n = 20000
    noise = _draws(NoisyWeight("cpni", noise_rank=2), {"noise_d": d, "noise_factor": f}, w, n).reshape(n, 6)
    std_w = np.std(np.asarray(w, np.float64), ddof=1)
    cov = np.diag(np.abs(std_w * np.asarray(d, np.float64))) + np.asarray(f, np.float64) @ np.asarray(f, np.float64).T
    emp = np.cov(noise, rowvar=False)
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)  # s.e. of Gaussian sample covariances
    assert np.max(np.abs(emp - cov) / se) < 5, (emp, cov)
    # The off-diagonal structure is really there (not a diagonal-only sampler).
    assert np.max(np.abs(cov - np.diag(np.diag(cov)))) > 10 * se.max()


def test_cpni_initialisation():
    w = jnp.ones((3, 3, 2, 4))
    params = NoisyWeight("cpni", noise_rank=5).init(jax.random.key(1), w)["params"]
    assert params["noise_d"].shape == (72,) and params["noise_factor"].shape == (72, 5)
    np.testing.assert_allclose(np.asarray(params["noise_d"]), 0.0625)
    np.testing.assert_allclose(np.asarray(params["noise_factor"]), 0.01)


def test_weight_draw_is_shared_by_the_batch_and_fresh_per_key():
    layer = NoisyDense(3, "pni")
    x = jnp.tile(jnp.arange(5.0)[None], (4, 1))  # four identical rows
    params = layer.init(jax.random.key(0), x)["params"]
    out = np.asarray(layer.apply({"params": params}, x, rngs={"noise": jax.random.key(1)}))
    np.testing.assert_array_equal(out, np.broadcast_to(out[0], out.shape))  # one weight draw for the batch
    clean = np.asarray(x @ params["kernel"] + params["bias"])
    assert np.max(np.abs(out - clean)) > 1e-3  # noise is on
    other = np.asarray(layer.apply({"params": params}, x, rngs={"noise": jax.random.key(2)}))
    assert np.max(np.abs(other - out)) > 1e-3


@pytest.mark.parametrize("name", ["cifar_resnet8_gauss", "cifar_resnet8_pni", "cifar_resnet8_cpni"])
def test_stochastic_resnet_is_pure_in_the_key(name):
    model = get_model(name, 4, dataset="digits", noise_sd=0.2)
    x = jnp.full((3, 8, 8, 1), 0.5)
    variables = model.init(jax.random.key(0), x)
    apply_fn = make_stochastic_apply_fn(model)
    a, b = apply_fn(variables, x, jax.random.key(1)), apply_fn(variables, x, jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c = apply_fn(variables, x, jax.random.key(2))
    assert np.max(np.abs(np.asarray(a - c))) > 1e-4
    # Identical images differ only through the per-image input noise: equal rows with input noise off.
    quiet = np.asarray(apply_fn(variables, x, jax.random.key(1), input_noise=False))
    np.testing.assert_allclose(quiet, np.broadcast_to(quiet[0], quiet.shape), rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(np.asarray(a)[0] - np.asarray(a)[1])) > 1e-5
    with pytest.raises(ValueError, match="rngs"):
        model.apply(variables, x)


def test_input_noise_std_in_pixel_units_per_channel():
    """With weight noise off, the first conv sees x + noise_sd_c * z: recover noise_sd from the model's inputs."""
    model = get_model("cifar_resnet8_gauss", 3, noise_sd=(0.1, 0.2, 0.4), normalization="none", mean=(0, 0, 0))
    x = jnp.zeros((256, 4, 4, 3))
    variables = model.init(jax.random.key(0), x)
    _, inter = model.apply(variables, x, rngs={"noise": jax.random.key(3)}, capture_intermediates=True,
                           mutable=["intermediates"])
    seen = np.asarray(inter["intermediates"]["Normalize_0"]["__call__"][0])
    np.testing.assert_allclose(seen.reshape(-1, 3).std(axis=0), [0.1, 0.2, 0.4], rtol=0.05)


def test_bad_model_settings_raise():
    x = jnp.zeros((1, 8, 8, 1))
    with pytest.raises(ValueError, match="noise_sd"):
        get_model("cifar_resnet8_gauss", 3, dataset="digits", noise_sd=-0.1).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="granularity"):
        get_model("cifar_resnet8_pni", 3, dataset="digits", granularity="row").init(jax.random.key(0), x)
