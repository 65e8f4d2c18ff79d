"""Consistency and MACER (smoothjax.certified_training): each loss against a NumPy / SciPy re-derivation of the
paper's equation (values, and for a linear model the gradient by central finite differences in float64), one-line
errors, one train step on 1 device equal to 4, and train.py end to end on digits."""

import json
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from conftest import ROOT, subprocess_env
from smoothjax.certified_training import consistency, macer



def _softmax(z):
    return scipy.special.softmax(z, axis=-1)


def np_consistency(logits, labels, lbd, eta):
    """Jeong & Shin's Eq.: mean CE over copies + lbd * mean_i KL(p_hat || p_i) + eta * H(p_hat), in float64."""
    logits = np.asarray(logits, np.float64)
    b, m, _ = logits.shape
    p = _softmax(logits)
    ce = np.mean([-np.log(p[i, j, labels[i]]) for i in range(b) for j in range(m)])
    p_hat = p.mean(axis=1)
    kl = np.mean([np.mean([scipy.stats.entropy(p_hat[i], p[i, j]) for j in range(m)]) for i in range(b)])
    ent = np.mean([scipy.stats.entropy(p_hat[i]) for i in range(b)])
    return ce + lbd * kl + eta * ent, ce, kl, ent


def np_macer(logits, labels, sigma, lbd, beta, gamma):
    """Zhai et al.'s Eq.: -log g_y + lbd * sigma/2 * max(gamma - xi, 0) over correctly classified images with finite
    xi = Phi^-1(q_y) - Phi^-1(max_{c != y} q_c), q the beta-tempered soft smoothed classifier; means over images."""
    logits = np.asarray(logits, np.float64)
    cls, rob, hinge = [], [], []
    for z, y in zip(logits, labels):
        g = _softmax(z).mean(axis=0)
        cls.append(-np.log(g[y] + 1e-10))
        q = _softmax(beta * z).mean(axis=0)
        runner_up = np.max(np.delete(q, y))
        xi = scipy.stats.norm.ppf(q[y]) - scipy.stats.norm.ppf(runner_up)
        active = np.argmax(q) == y and np.isfinite(xi) and xi <= gamma
        hinge.append(active)
        rob.append(sigma / 2 * (gamma - xi) if active else 0.0)
    return np.mean(cls) + lbd * np.mean(rob), np.mean(cls), np.mean(rob), np.mean(hinge)


def test_consistency_objective_matches_scipy():
    logits = np.random.default_rng(0).normal(0, 2, (5, 3, 7)).astype(np.float32)
    labels = np.array([0, 3, 6, 2, 2])
    got = consistency.consistency_objective(jnp.asarray(logits), jnp.asarray(labels), lbd=10.0, eta=0.5)
    loss, ce, kl, ent = np_consistency(logits, labels, 10.0, 0.5)
    assert kl > 0.05 and ent > 0.1  # both regularisers are far from zero here
    np.testing.assert_allclose([got["loss"], got["cross_entropy"], got["kl"], got["entropy"]], [loss, ce, kl, ent],
                               rtol=1e-5)


def test_consistency_kl_vanishes_on_identical_copies_and_entropy_is_log_k_when_uniform():
    same = jnp.tile(jnp.array([[1.0, -2.0, 0.5]]), (4, 3, 1))
    kl, _ = consistency.consistency_terms(same)
    np.testing.assert_allclose(kl, 0.0, atol=1e-6)
    _, ent = consistency.consistency_terms(jnp.zeros((2, 2, 5)))
    np.testing.assert_allclose(ent, np.log(5), rtol=1e-6)


def _macer_logits():
    """Images of every kind: in the hinge, correct with xi > gamma, misclassified, and q_y rounded to 1 (xi = inf)."""
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 0.08, (6, 4, 5))
    logits[1, :, 2] += 3.0  # label 2, a large margin: xi > gamma at beta 16 -> outside the hinge
    logits[2, :, 4] += 0.2  # label 0 but class 4 on top -> not in G
    logits[3, :, 1] += 60.0  # q_1 == 1 in float32 -> Phi^-1 = inf -> left out
    return logits.astype(np.float32), np.array([0, 2, 0, 1, 3, 4])


def test_macer_objective_matches_scipy_on_every_kind_of_image():
    logits, labels = _macer_logits()
    labels[0] = int(np.argmax(_softmax(16 * logits[0].astype(np.float64)).mean(0)))  # image 0 correct, in the hinge
    got = macer.macer_objective(jnp.asarray(logits), jnp.asarray(labels), sigma=0.5, lbd=12.0, beta=16.0, gamma=8.0)
    loss, cls, rob, hinge = np_macer(logits, labels, 0.5, 12.0, 16.0, 8.0)
    assert 0 < hinge < 1 and rob > 0
    np.testing.assert_allclose([got["loss"], got["classification"], got["robustness"], got["in_hinge"]],
                               [loss, cls, rob, hinge], rtol=2e-4)
    terms = macer.macer_terms(jnp.asarray(logits), jnp.asarray(labels), sigma=0.5, beta=16.0, gamma=8.0)
    assert not bool(terms["in_hinge"][1]) and not bool(terms["in_hinge"][2]) and not bool(terms["in_hinge"][3])


def test_macer_gradient_is_finite_where_quantiles_are_infinite():
    logits, labels = _macer_logits()
    grad = jax.grad(lambda z: macer.macer_objective(z, jnp.asarray(labels), sigma=0.5, lbd=12.0, beta=16.0,
                                                    gamma=8.0)["loss"])(jnp.asarray(logits))
    assert np.all(np.isfinite(grad)) and np.any(grad[3] != 0)  # image 3 still has its classification gradient


class Linear(nn.Module):
    """logits = flatten(x) @ W + b; takes ``train`` like the library's models."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(4, kernel_init=nn.initializers.normal(0.3))(x.reshape(x.shape[0], -1))


def _finite_difference_check(loss_fn, np_loss, m, sigma, steps=(1e-4,), rtol=2e-2):
    """jax.grad of ``loss_fn`` (float32) against central differences of ``np_loss`` (float64) on a linear model,
    with the noise the loss documents: ``sigma * normal(key, (B, m, H, W, C))``."""
    model = Linear()
    x = jax.random.uniform(jax.random.key(0), (6, 2, 2, 1))
    y = jnp.array([0, 1, 2, 3, 0, 1])
    params = model.init(jax.random.key(1), x)["params"]
    key = jax.random.key(2)
    grad = jax.grad(lambda p: loss_fn(p, {}, {"image": x, "label": y}, key)[0])(params)
    rows = np.asarray(x, np.float64)[:, None] + sigma * np.asarray(jax.random.normal(key, (6, m, 2, 2, 1)), np.float64)
    rows = rows.reshape(6, m, -1)
    w, b = np.asarray(params["Dense_0"]["kernel"], np.float64), np.asarray(params["Dense_0"]["bias"], np.float64)
    f = lambda w_, b_: np_loss(rows @ w_ + b_, np.asarray(y))  # noqa: E731
    assert abs(f(w, b) - float(loss_fn(params, {}, {"image": x, "label": y}, key)[0])) < 1e-4 * max(1, abs(f(w, b)))
    h = steps[0]
    fd_w = np.zeros_like(w)
    for idx in np.ndindex(w.shape):
        e = np.zeros_like(w)
        e[idx] = h
        fd_w[idx] = (f(w + e, b) - f(w - e, b)) / (2 * h)
    fd_b = np.array([(f(w, b + h * np.eye(4)[k]) - f(w, b - h * np.eye(4)[k])) / (2 * h) for k in range(4)])
    assert np.abs(fd_w).max() > 1e-3
    np.testing.assert_allclose(grad["Dense_0"]["kernel"], fd_w, rtol=rtol, atol=1e-4)
    np.testing.assert_allclose(grad["Dense_0"]["bias"], fd_b, rtol=rtol, atol=1e-4)


def test_consistency_gradient_of_a_linear_model_matches_finite_differences():
    loss_fn = consistency.consistency_loss(Linear(), sigma=0.5, num_noise_vec=3, lbd=10.0, eta=0.5)
    _finite_difference_check(loss_fn, lambda z, y: np_consistency(z, y, 10.0, 0.5)[0], m=3, sigma=0.5)


def test_macer_gradient_of_a_linear_model_matches_finite_differences():
    loss_fn = macer.macer_loss(Linear(), sigma=0.5, num_noise_vec=4, lbd=12.0, beta=2.0, gamma=8.0)
    np_loss = lambda z, y: np_macer(z, y, 0.5, 12.0, 2.0, 8.0)  # noqa: E731
    _finite_difference_check(loss_fn, lambda z, y: np_loss(z, y)[0], m=4, sigma=0.5)
    # Not vacuous: with this key some images are in the hinge (the robustness term contributes to the gradient).
    model, key = Linear(), jax.random.key(2)
    x = jax.random.uniform(jax.random.key(0), (6, 2, 2, 1))
    params = model.init(jax.random.key(1), x)["params"]
    _, (_, metrics) = loss_fn(params, {}, {"image": x, "label": jnp.array([0, 1, 2, 3, 0, 1])}, key)
    assert 0 < float(metrics["in_hinge"]) and float(metrics["robustness"]) > 0


def test_macer_deferred_epochs_train_on_the_classification_term_alone_first():
    model, key = Linear(), jax.random.key(2)
    x = jax.random.uniform(jax.random.key(0), (6, 2, 2, 1))
    params = model.init(jax.random.key(1), x)["params"]
    loss_fn = macer.macer_loss(model, sigma=0.5, num_noise_vec=4, lbd=12.0, beta=2.0, gamma=8.0, deferred_epochs=3)
    batch = {"image": x, "label": jnp.array([0, 1, 2, 3, 0, 1])}
    before = loss_fn(params, {}, {**batch, "epoch": jnp.int32(2)}, key)[1][1]
    after = loss_fn(params, {}, {**batch, "epoch": jnp.int32(3)}, key)[1][1]
    assert float(before["robustness"]) > 0 and float(before["lbd"]) == 0 and float(after["lbd"]) == 12
    np.testing.assert_allclose(before["loss"], before["classification"], rtol=1e-6)
    np.testing.assert_allclose(after["loss"], after["classification"] + 12 * after["robustness"], rtol=1e-6)


@pytest.mark.parametrize("factory,kwargs,message", [
    (consistency.consistency_loss, {"num_noise_vec": 1}, "num_noise_vec=1 is not allowed; it must be an integer >= 2"),
    (consistency.consistency_loss, {"lbd": -1.0}, "lbd=-1.0 is not allowed"),
    (consistency.consistency_loss, {"eta": float("nan")}, "eta=nan is not allowed"),
    (macer.macer_loss, {"num_noise_vec": 0}, "num_noise_vec=0 is not allowed; it must be an integer >= 1"),
    (macer.macer_loss, {"beta": 0.0}, "beta=0.0 is not allowed; it must be a finite number > 0"),
    (macer.macer_loss, {"gamma": "8"}, "gamma='8' is not allowed"),
    (macer.macer_loss, {"sigma": -0.5}, "sigma=-0.5"),
    (macer.macer_loss, {"deferred_epochs": 1.5}, "deferred_epochs=1.5 is not allowed; it must be an integer >= 0"),
])
def test_bad_settings_raise_one_line_errors(factory, kwargs, message):
    with pytest.raises(ValueError, match="^[^\n]*$") as err:
        factory(Linear(), **{"sigma": 0.5, **kwargs})
    assert message in str(err.value)


def _run_worker(loss, devices, tmp_path):
    out = tmp_path / f"{loss}{devices}.npz"
    subprocess.run([sys.executable, str(ROOT / "tests" / "_certified_training_worker.py"), loss, str(out)],
                   check=True, env=subprocess_env(devices), cwd=ROOT, timeout=600)
    return dict(np.load(out))


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["consistency", "macer"])
def test_one_step_on_one_and_four_devices(loss, tmp_path):
    one, four = _run_worker(loss, 1, tmp_path), _run_worker(loss, 4, tmp_path)
    assert one.pop("devices") == 1 and four.pop("devices") == 4
    assert one.keys() == four.keys() and any("batch_stats" in k for k in one)
    assert one.pop("in_hinge", 1) > 0  # MACER's hinge is active in this step (its gradient is part of the check)
    four.pop("in_hinge", None)
    for k in one:  # batch statistics and the batch mean over all 4 shards, so per-device means would fail this
        np.testing.assert_allclose(one[k], four[k], rtol=2e-4, atol=2e-5, err_msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("loss,extra", [("consistency", []), ("macer", ["--config.macer.num_noise_vec=4",
                                                                         "--config.macer.deferred_epochs=1"])])
def test_train_py_end_to_end_on_digits(loss, extra, tmp_path):
    workdir = tmp_path / loss
    r = subprocess.run([sys.executable, "train.py", "--config=configs/digits.py", f"--workdir={workdir}",
                        "--config.sigma=0.5", f"--config.loss={loss}", "--config.total_steps=40",
                        "--config.log_every_steps=20", *extra], cwd=ROOT, env=subprocess_env(1), capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [rec for rec in records if "loss" in rec]
    term = "kl" if loss == "consistency" else "robustness"
    assert [rec["step"] for rec in steps] == [20, 40] and all(np.isfinite(rec[term]) for rec in steps)
    if loss == "macer":  # epoch 0 (steps 0-21) with lambda 0, then the configured lambda: both phases ran
        assert steps[0]["lbd"] == 0 and steps[1]["lbd"] > 0
    else:
        assert steps[-1]["loss"] < steps[0]["loss"]  # 40 steps of SGD on digits lower the loss
    # A tenth is chance; the model learnt the digits (MACER: its robustness term from step 22 slows it down).
    assert records[-1]["eval_clean_accuracy"] > (0.5 if loss == "consistency" else 0.25)


@pytest.mark.parametrize("override,message", [
    ("--config.consistency.num_noise_vec=1", "num_noise_vec=1 is not allowed"),
    ("--config.macer.lbd=-2", "lbd=-2.0 is not allowed"),
])
def test_bad_config_one_line_error_and_nothing_written(tmp_path, override, message):
    loss = override.split(".")[1]
    workdir = tmp_path / "run"
    r = subprocess.run([sys.executable, "train.py", "--config=configs/digits.py", f"--workdir={workdir}",
                        f"--config.loss={loss}", override], cwd=ROOT, env=subprocess_env(1), capture_output=True,
                       text=True, timeout=300)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0 and last.startswith("train.py: error:") and message in last, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not workdir.exists()
