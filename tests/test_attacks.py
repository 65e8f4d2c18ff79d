"""SmoothAdv attacks against independent oracles: closed forms for linear models, a float64 NumPy re-derivation of a
PGD step, a plain Python loop over the noise draws, and the budget / box guarantees of PGD, no-grad PGD and DDN."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, subprocess_env
from smoothjax.smoothadv import attacks
from smoothjax.models import get_model, make_apply_fn

SHAPE = (4, 4, 1)  # 16 pixels: linear models stay tiny.
KEY = jax.random.key(0)  # the random directions of zero gradients (keys are required, never defaulted)


def linear_apply(variables, images):
    """A linear classifier on flattened pixels: logits = x W + b."""
    return images.reshape(images.shape[0], -1) @ variables["w"] + variables["b"]


def linear_variables(num_classes, seed=0, dim=16):
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(rng.normal(size=(dim, num_classes)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=num_classes) * 0.1, jnp.float32)}


def numpy_pgd_step(w, b, x, y, noise, epsilon, step_size, no_grad=False):
    """One SmoothAdv PGD step from delta = 0 on a linear softmax model, derived by hand in float64.

    L(x) = -log(mean_j p_y(x + eta_j)), p = softmax(x W + b); dp_y/dx = p_y (W[:, y] - W p), so
    dL/dx = -sum_j p_y,j (W[:, y] - W p_j) / sum_j p_y,j. No-grad: g = -mean_j p_y,j eta_j.
    Then delta = step * g / |g|, clip x + delta to [0, 1], project delta onto the eps-ball.
    """
    w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
    bsz = x.shape[0]
    xf = np.asarray(x, np.float64).reshape(bsz, -1)
    nf = np.asarray(noise, np.float64).reshape(noise.shape[0], bsz, -1)
    z = (xf[None] + nf) @ w + b
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    p_y = p[:, np.arange(bsz), y]  # (m, B)
    if no_grad:
        g = -np.mean(p_y[..., None] * nf, axis=0)
    else:
        dlogp = w[:, y].T[None] - p @ w.T  # (m, B, D): d log p_y / dx per draw
        g = -np.sum(p_y[..., None] * dlogp, axis=0) / p_y.sum(0)[:, None]
    delta = step_size * g / np.linalg.norm(g, axis=1, keepdims=True)
    delta = np.clip(xf + delta, 0, 1) - xf
    norm = np.linalg.norm(delta, axis=1, keepdims=True)
    delta *= np.minimum(1.0, epsilon / norm)
    return (xf + delta).reshape(x.shape)


def l2(a, b):
    return np.linalg.norm(np.asarray(a, np.float64).reshape(a.shape[0], -1)
                          - np.asarray(b, np.float64).reshape(b.shape[0], -1), axis=1)


# ------------------------------------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("num_steps,m", [(1, 1), (4, 1), (3, 3)])
def test_pgd_reaches_closed_form_on_two_class_linear_model(num_steps, m):
    v = linear_variables(2)
    x = jnp.full((4,) + SHAPE, 0.5)  # Far from the box: 0.5 +- 0.3 stays inside.
    y = jnp.array([0, 1, 1, 0])
    noise = None if m == 1 else jnp.zeros((m, 4) + SHAPE)
    eps = 0.3
    x_adv = jax.jit(lambda v, x, y: attacks.smooth_pgd_l2(linear_apply, v, x, y, noise, epsilon=eps,
                                                          num_steps=num_steps, key=KEY))(v, x, y)
    w = np.asarray(v["w"], np.float64)
    for i, label in enumerate(np.asarray(y)):
        diff = w[:, label] - w[:, 1 - label]  # the true class's weight minus the other's
        expected = 0.5 - eps * diff / np.linalg.norm(diff)
        np.testing.assert_allclose(np.asarray(x_adv[i]).ravel(), expected, atol=2e-6)


def test_one_pgd_step_matches_numpy_rederivation():
    v = linear_variables(4, seed=1)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.uniform(0.0, 1.0, (6,) + SHAPE), jnp.float32)  # Some pixels near 0 / 1: clipping acts.
    y = jnp.asarray(rng.integers(0, 4, 6))
    noise = jnp.asarray(0.3 * rng.standard_normal((3, 6) + SHAPE), jnp.float32)
    for eps, step, no_grad in [(0.4, None, False), (2.0, 0.7, False), (0.4, None, True), (5.0, 1.5, True)]:
        got = attacks.smooth_pgd_l2(linear_apply, v, x, y, noise, epsilon=eps, num_steps=1, step_size=step,
                                    no_grad=no_grad, key=KEY)
        want = numpy_pgd_step(v["w"], v["b"], np.asarray(x), np.asarray(y), np.asarray(noise), eps,
                              2 * eps if step is None else step, no_grad)
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"eps={eps} step={step} no_grad={no_grad}")
    assert np.any(np.asarray(got) == 0) or np.any(np.asarray(got) == 1)  # the box was active at least once


def test_vmapped_loss_and_gradient_equal_a_loop_over_noise_draws():
    model = get_model("small_cnn", 10)
    apply_fn = make_apply_fn(model)
    x = jax.random.uniform(jax.random.key(0), (3, 8, 8, 1))
    y = jnp.array([1, 4, 7])
    v = model.init(jax.random.key(1), x)
    noise = 0.5 * jax.random.normal(jax.random.key(2), (5, 3, 8, 8, 1))

    def vmapped(xa):
        return attacks.smoothed_cross_entropy(apply_fn, v, xa, y, noise)[0]

    def looped(xa):  # A plain Python loop over the m draws: mean of the per-draw softmax probabilities.
        probs = [jax.nn.softmax(apply_fn(v, xa + noise[j]))[jnp.arange(3), y] for j in range(noise.shape[0])]
        return -jnp.log(jnp.maximum(sum(probs) / len(probs), 1e-20))

    np.testing.assert_allclose(vmapped(x), looped(x), rtol=1e-5)
    g_vmapped = jax.grad(lambda xa: vmapped(xa).sum())(x)
    g_looped = jax.grad(lambda xa: looped(xa).sum())(x)
    np.testing.assert_allclose(g_vmapped, g_looped, rtol=1e-4, atol=1e-6)
    assert float(jnp.abs(g_vmapped).max()) > 1e-3  # a real gradient, not zeros
    # m = 1 is the plain cross-entropy.
    ce = attacks.smoothed_cross_entropy(apply_fn, v, x, y, noise[:1])[0]
    logits = np.asarray(apply_fn(v, x + noise[0]), np.float64)
    np.testing.assert_allclose(ce, np.log(np.exp(logits).sum(1)) - logits[np.arange(3), np.asarray(y)], rtol=1e-5)


# --------------------------------------------------------------------------------------------- guarantees
@pytest.mark.parametrize("attack", ["pgd", "no_grad", "ddn"])
def test_budget_and_box_always_hold(attack):
    model = get_model("small_cnn", 10)
    apply_fn = make_apply_fn(model)
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (8, 8, 8, 1)).astype(np.float32)
    x[:2] = np.round(x[:2])  # Images of pure 0/1 pixels: the box binds everywhere.
    y = jnp.asarray(rng.integers(0, 10, 8))
    v = model.init(jax.random.key(4), x)
    noise = 0.5 * jax.random.normal(jax.random.key(5), (4, 8, 8, 8, 1))
    if attack == "ddn":
        def fn(eps):
            return attacks.smooth_ddn(apply_fn, v, jnp.asarray(x), y, noise, epsilon=eps, num_steps=4, init_norm=1.0,
                                      key=KEY)
    else:
        def fn(eps):
            return attacks.smooth_pgd_l2(apply_fn, v, jnp.asarray(x), y, noise, epsilon=eps, num_steps=3,
                                         no_grad=attack == "no_grad", key=jax.random.key(6))
    fn = jax.jit(fn)  # epsilon traced: one compilation for every budget
    for eps in (0.1, 1.0, 4.0):
        x_adv = np.asarray(fn(jnp.float32(eps)))
        norms = l2(x_adv, x)
        assert np.all(norms <= eps + 1e-5), (eps, norms)
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0, eps
        assert norms.max() > 0.05 * eps, eps  # the attack moved
        if attack != "ddn" and eps <= 1.0:  # from 0 with steps of 2 eps / T, PGD ends on the sphere
            assert np.sum(norms > eps - 1e-4) >= 6, (eps, norms)


def test_zero_gradient_gets_a_random_unit_direction():
    def flat(variables, images):  # constant logits: the gradient is exactly zero
        return jnp.zeros((images.shape[0], 3)) + variables["b"]

    x = jnp.full((2,) + SHAPE, 0.5)
    y = jnp.array([0, 2])
    attack = jax.jit(lambda key: attacks.smooth_pgd_l2(flat, {"b": jnp.zeros(3)}, x, y, None, epsilon=0.2,
                                                       num_steps=1, step_size=0.1, key=key))
    out = [attack(jax.random.key(k)) for k in (0, 1)]
    np.testing.assert_allclose(l2(out[0], x), 0.1, rtol=1e-5)  # one step of length step_size, inside the ball
    assert l2(out[0], out[1]).min() > 1e-3  # the direction comes from the key


def test_ddn_finds_minimal_adversarial_on_linear_model():
    """Two-class linear model, no noise: the boundary is at distance d = margin / |w_y - w_o| along -(w_y - w_o).
    DDN must return a misclassified point when d < eps, quantised and inside the budget."""
    v = linear_variables(2, seed=5)
    x = jnp.full((1,) + SHAPE, 128 / 255)  # on the 8-bit grid, so every DDN iterate is too
    w = np.asarray(v["w"], np.float64)
    diff = w[:, 0] - w[:, 1]
    # Shift the bias so that class 0 wins at x with distance d_i to the boundary.
    attack = jax.jit(lambda b: attacks.smooth_ddn(linear_apply, {"w": v["w"], "b": b}, x[:1], jnp.array([0]), None,
                                                  epsilon=1.0, num_steps=10, init_norm=1.0, gamma=0.05, key=KEY)[0])
    for di in (0.2, 0.4, 0.6, 3.0):
        b = jnp.asarray([di * np.linalg.norm(diff) - 128 / 255 * diff.sum(), 0.0], jnp.float32)  # class 0 by d
        x_adv = attack(b)
        if di < 0.9:  # reachable within eps = 1 (up to DDN's norm steps of 5 %)
            assert int(jnp.argmax(linear_apply({"w": v["w"], "b": b}, x_adv[None]))) == 1, di
            assert l2(x_adv[None], x[:1])[0] < 1.0 + 1e-5
            np.testing.assert_allclose(np.asarray(x_adv) * 255, np.round(np.asarray(x_adv) * 255), atol=1e-3)
        else:  # unreachable within the iterates: no adversarial found, x itself comes back
            np.testing.assert_array_equal(x_adv, x[0])


def test_ddn_decides_by_the_mode_of_the_noisy_predictions():
    """m = 3 fixed draws along +-w_hat (w = w_0 - w_1), x of class 0 at distance 0.1 from the boundary: a draw of
    -0.5 w_hat is misclassified. With two such draws the mode is adversarial already at delta = 0, so DDN keeps
    delta = 0 (x comes back); with one such draw (the first) it is not, and DDN moves."""
    v = linear_variables(2, seed=5)
    x = jnp.full((1,) + SHAPE, 128 / 255)
    diff = np.asarray(v["w"][:, 0] - v["w"][:, 1], np.float64)
    b = jnp.asarray([0.1 * np.linalg.norm(diff) - 128 / 255 * diff.sum(), 0.0], jnp.float32)
    w_hat = jnp.asarray((diff / np.linalg.norm(diff)).reshape((1,) + SHAPE), jnp.float32)
    attack = jax.jit(lambda n: attacks.smooth_ddn(linear_apply, {"w": v["w"], "b": b}, x, jnp.array([0]), n,
                                                  epsilon=1.0, num_steps=5, init_norm=0.5, key=KEY))
    majority_adversarial = jnp.stack([0.5 * w_hat, -0.5 * w_hat, -0.5 * w_hat])
    np.testing.assert_array_equal(attack(majority_adversarial), x)
    minority_adversarial = jnp.stack([-0.5 * w_hat, 0.5 * w_hat, 0.5 * w_hat])
    assert l2(attack(minority_adversarial), x)[0] > 0.05


def test_ddn_mode_decision_and_cosine_schedule_against_reference_formulas():
    np.testing.assert_allclose(attacks.ddn_gamma_for_prediction(0.5, 20), 1 - (3 / 510 / 0.5) ** (1 / 20))
    preds = jnp.array([[1, 2], [1, 2], [3, 0], [3, 0]])  # (m=4, B=2): ties 1 vs 3 -> 1; 2 vs 0 -> 0
    np.testing.assert_array_equal(attacks._mode(preds, 4), [1, 0])


@pytest.mark.parametrize("attack", ["pgd", "no_grad", "ddn"])
def test_loop_and_unrolled_steps_give_the_same_attack(attack):
    """unroll=False (a lax.fori_loop, the default off CPU) and unroll=True (the CPU default) run the same steps:
    the step index, the fold_in keys and DDN's cosine rates are the same either way. They are not bit for bit equal
    on XLA:CPU (the loop body is fused differently: 1-ulp differences, 1.2e-7 here), so allclose; the CPU default
    (None) is exactly the unrolled program, what main ran before the option existed."""
    model = get_model("small_cnn", 10)
    apply_fn = make_apply_fn(model)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.uniform(0, 1, (4, 8, 8, 1)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, 4))
    v = model.init(jax.random.key(4), x)
    noise = 0.5 * jax.random.normal(jax.random.key(5), (3, 4, 8, 8, 1))
    if attack == "ddn":  # labels the model gets right, so that delta = 0 is not already adversarial
        y = jnp.argmax(apply_fn(v, x), -1)

    def run(xx, unroll):
        if attack == "ddn":
            return attacks.smooth_ddn(apply_fn, v, xx, y, noise, epsilon=1.0, num_steps=5, init_norm=0.5, key=KEY,
                                      unroll=unroll)
        return attacks.smooth_pgd_l2(apply_fn, v, xx, y, noise, epsilon=1.0, num_steps=5, no_grad=attack == "no_grad",
                                     key=KEY, unroll=unroll)

    run = jax.jit(run, static_argnums=1)
    looped, unrolled = run(x, False), run(x, True)
    assert jax.default_backend() == "cpu"
    np.testing.assert_allclose(np.asarray(looped), np.asarray(unrolled), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(run(x, None)), np.asarray(unrolled))  # the CPU default
    assert float(np.max(np.abs(np.asarray(unrolled) - np.asarray(x)))) > 1e-3  # the attack moved


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,message", [
    (dict(epsilon=-1.0, num_steps=2), "epsilon=-1.0 is not allowed"),
    (dict(epsilon=0.5, num_steps=0), "num_steps=0 is not allowed"),
    (dict(epsilon=0.5, num_steps=2, no_grad=True), "no_grad=True needs m > 1"),
    (dict(epsilon=0.5, num_steps=2, unroll="auto"), "unroll='auto' is not allowed; use None"),
])
def test_bad_arguments_raise_one_line_errors(kwargs, message):
    v = linear_variables(2)
    with pytest.raises(ValueError, match=message) as info:
        attacks.smooth_pgd_l2(linear_apply, v, jnp.zeros((1,) + SHAPE), jnp.zeros(1, jnp.int32), None, key=KEY,
                              **kwargs)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="noise has shape"):
        attacks.smooth_pgd_l2(linear_apply, v, jnp.zeros((1,) + SHAPE), jnp.zeros(1, jnp.int32),
                              jnp.zeros((2, 3) + SHAPE), epsilon=0.1, num_steps=1, key=KEY)


# -------------------------------------------------------------------------------------------- devices
def test_four_devices_give_the_same_attacks_and_train_steps_as_one(tmp_path):
    worker = str(ROOT / "tests" / "_smoothadv_worker.py")
    procs = {d: subprocess.Popen([sys.executable, worker, str(tmp_path / f"{d}.npz")], env=subprocess_env(d), cwd=ROOT)
             for d in (1, 4)}  # concurrently: 2 cores
    out = {}
    for d, proc in procs.items():
        assert proc.wait(timeout=600) == 0
        out[d] = np.load(tmp_path / f"{d}.npz")
    assert int(out[1]["devices"]) == 1 and int(out[4]["devices"]) == 4
    for name in ("pgd", "no_grad", "ddn"):
        np.testing.assert_allclose(out[4][name], out[1][name], atol=1e-6, err_msg=name)
    state_keys = [k for k in out[1].files if k.startswith("state") or k.startswith("loss")]
    assert len(state_keys) > 20
    for k in state_keys:
        np.testing.assert_allclose(out[4][k], out[1][k], rtol=1e-4, atol=1e-5, err_msg=k)
