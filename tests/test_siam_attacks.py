"""L-inf PGD / EPGD: the box and the image range hold, EPGD's gradient is the mean of per-pass gradients (computed
here with jax.grad of a hand-written cross-entropy, one pass at a time), and PGD hurts a linear model as the
closed-form worst case says."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smoothjax.siam.linf_attacks import expectation_gradient, pgd_linf, project_linf
from smoothjax.models import get_model, make_stochastic_apply_fn


@pytest.fixture(scope="module")
def pni_model():
    model = get_model("cifar_resnet8_pni", 4, dataset="digits", noise_sd=0.1)
    x = jax.random.uniform(jax.random.key(0), (5, 8, 8, 1))
    variables = model.init(jax.random.key(1), x)
    return make_stochastic_apply_fn(model), variables, x, jnp.array([0, 1, 2, 3, 0])


def test_pgd_and_epgd_stay_in_the_box_and_the_image_range(pni_model, num_passes=2):
    apply_fn, variables, x, y = pni_model
    x = x.at[0].set(0.0).at[1].set(1.0)  # images at the range edges: clipping must act
    eps = 0.1
    attack = jax.jit(lambda v, xx, yy, k: pgd_linf(apply_fn, v, xx, yy, k, epsilon=eps, num_steps=3,
                                                   num_passes=num_passes))
    x_adv = attack(variables, x, y, jax.random.key(2))
    d = np.asarray(x_adv - x)
    assert np.max(np.abs(d)) <= eps + 1e-6
    assert float(jnp.min(x_adv)) >= 0.0 and float(jnp.max(x_adv)) <= 1.0
    assert np.max(np.abs(d)) > 0.5 * eps  # it moved
    np.testing.assert_allclose(np.asarray(x_adv)[1], np.clip(np.asarray(x_adv)[1], 1 - eps, 1.0))


@pytest.mark.parametrize("pass_loop", ["vmap", "scan"])
def test_epgd_gradient_is_the_mean_of_per_pass_gradients(pni_model, pass_loop):
    apply_fn, variables, x, y = pni_model
    key, m = jax.random.key(11), 4

    def one_pass_loss(xx, k):
        logits = apply_fn(variables, xx, k)
        return -jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(y.shape[0]), y])

    grad_one = jax.jit(jax.grad(one_pass_loss))
    per_pass = [np.asarray(grad_one(x, k), np.float64) for k in jax.random.split(key, m)]
    got = jax.jit(lambda xx, k: expectation_gradient(apply_fn, variables, xx, y, k, num_passes=m,
                                                     pass_loop=pass_loop))(x, key)
    got = np.asarray(got, np.float64)
    np.testing.assert_allclose(got, np.mean(per_pass, axis=0), rtol=2e-4, atol=1e-7)
    assert np.max(np.abs(per_pass[0] - per_pass[1])) > 1e-4  # the passes really differ (noise on)


def test_pgd_reaches_the_closed_form_worst_case_of_a_linear_model():
    """For 2-class logits (0, w.x + b) the worst L-inf perturbation is -eps * sign(w) for label 1 (then clipped);
    PGD with enough steps from no random start must find it exactly, whether the model is written in the
    stochastic convention (variables, images, key) or the deterministic one (variables, images)."""
    w = jnp.array([1.0, -2.0, 0.5, 3.0])
    deterministic = lambda v, x: jnp.stack([jnp.zeros(x.shape[0]), x.reshape(x.shape[0], -1) @ w], -1)  # noqa: E731
    x = jnp.array([[0.5, 0.5, 0.02, 0.98]]).reshape(1, 1, 2, 2)
    want = np.clip(np.asarray(x).reshape(-1) - 0.05 * np.sign(np.asarray(w)), 0, 1)
    for apply_fn in (lambda v, x, k: deterministic(v, x), deterministic):
        x_adv = pgd_linf(apply_fn, None, x, jnp.array([1]), jax.random.key(0), epsilon=0.05, num_steps=8,
                         random_start=False)
        np.testing.assert_allclose(np.asarray(x_adv).reshape(-1), want, atol=1e-7)


def test_loop_and_unrolled_pgd_give_the_same_attack(pni_model):
    """EPGD's steps in a lax.fori_loop (unroll=False, the default off CPU) equal the unrolled steps (the CPU
    default). Sign steps amplify 1-ulp gradient differences only where a gradient entry is ~0, so equal here."""
    apply_fn, variables, x, y = pni_model
    run = jax.jit(lambda xx, unroll: pgd_linf(apply_fn, variables, xx, y, jax.random.key(2), epsilon=8 / 255,
                                              num_steps=3, num_passes=2, unroll=unroll), static_argnums=1)
    looped, unrolled = run(x, False), run(x, True)
    np.testing.assert_array_equal(np.asarray(looped), np.asarray(unrolled))
    assert float(np.max(np.abs(np.asarray(unrolled) - np.asarray(x)))) > 1e-3
    with pytest.raises(ValueError, match="unroll=1 is not allowed"):
        pgd_linf(apply_fn, variables, x, y, jax.random.key(2), num_steps=1, unroll=1)


def test_project_linf_and_bad_arguments():
    x = jnp.array([0.0, 0.5, 1.0])
    np.testing.assert_allclose(np.asarray(project_linf(jnp.array([-0.3, 0.9, 0.95]), x, 0.1)), [0.0, 0.6, 0.95])
    with pytest.raises(ValueError, match="num_passes=0"):
        pgd_linf(lambda v, x, k: x, None, jnp.zeros((1, 2, 2, 1)), jnp.zeros((1,), jnp.int32), jax.random.key(0),
                 num_passes=0)
    with pytest.raises(ValueError, match="y has shape"):
        pgd_linf(lambda v, x, k: x, None, jnp.zeros((1, 2, 2, 1)), jnp.zeros((2,), jnp.int32), jax.random.key(0))
    with pytest.raises(ValueError, match="pass_loop='loop'"):
        pgd_linf(lambda v, x, k: x, None, jnp.zeros((1, 2, 2, 1)), jnp.zeros((1,), jnp.int32), jax.random.key(0),
                 num_steps=1, pass_loop="loop")
