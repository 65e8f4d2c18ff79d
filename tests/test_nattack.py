"""NAttack on an undefended linear classifier: it breaks the points whose closed-form L-inf margin is below epsilon
within its query budget, cannot break the ones whose margin is above, and never leaves the box or [0, 1]."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smoothjax.siam.nattack import candidates, margin_loss, nattack

W = np.array([[1.0, -1.0], [-0.5, 0.5], [2.0, -2.0], [0.25, -0.25]], np.float32)  # 4 pixels -> 2 classes


def _score_fn(images):
    logits = images.reshape(images.shape[0], -1) @ jnp.asarray(W)
    return jax.nn.softmax(logits, -1)


def test_breaks_easy_points_only_and_stays_in_the_box():
    eps = 0.05
    # Logit gap of class 0 over class 1 is 2 * (x . w0) with w0 = (1, -.5, 2, .25); the worst L-inf perturbation
    # lowers x . w0 by eps * ||w0||_1 = 0.05 * 3.75 = 0.1875 (when no pixel hits 0 or 1).
    w0 = W[:, 0]
    base = np.array([0.4, 0.6, 0.55, 0.4], np.float32)
    rows, easy = [], []
    for margin in (0.03, 0.08, 0.12, 0.5, 0.9):  # x . w0 = margin
        x = base + (margin - base @ w0) * w0 / (w0 @ w0)
        rows.append(x)
        easy.append(margin < eps * np.abs(w0).sum() * 0.9)
    x = np.stack(rows)
    assert x.min() > eps and x.max() < 1 - eps  # no pixel clipping: the closed-form margin is exact
    x = jnp.asarray(x.reshape(-1, 2, 2, 1))
    y = jnp.zeros(x.shape[0], jnp.int32)
    assert np.all(np.asarray(jnp.argmax(_score_fn(x), -1)) == 0)  # all correctly classified at the start
    out = nattack(_score_fn, x, y, jax.random.key(0), epsilon=eps, population=100, max_iterations=200)
    np.testing.assert_array_equal(out["success"], np.array(easy))
    adv = out["adversarial"]
    assert np.max(np.abs(adv - np.asarray(x))) <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    broken = np.asarray(jnp.argmax(_score_fn(jnp.asarray(adv)), -1)) != 0
    np.testing.assert_array_equal(broken, np.array(easy))  # the returned examples really fool the classifier
    assert np.all(out["queries"][np.array(easy)] <= 200 * 101 + 1)
    assert np.all(out["queries"][~np.array(easy)] == 1 + out["iterations"] * 101)


def _linear_score(images, w):
    return jax.nn.softmax(images.reshape(images.shape[0], -1) @ w, -1)


# NAttack traces its score function twice per (function, settings, shapes): the first prediction and the step.
_TRACED_TWICE = chex.assert_max_traces(_linear_score, n=2)


def test_new_batches_reuse_the_compiled_step():
    """Batches of the same shape, new weights and labels: no retrace (chex counts the traces of the score function);
    a new batch shape is a new program, which chex reports."""
    rng = np.random.default_rng(4)
    for _ in range(3):
        x = rng.uniform(0.2, 0.8, (4, 2, 2, 1)).astype(np.float32)
        w = jnp.asarray(rng.normal(size=(4, 2)).astype(np.float32))
        nattack(_TRACED_TWICE, x, rng.integers(0, 2, 4).astype(np.int32), jax.random.key(5), epsilon=0.05,
                population=8, max_iterations=3, score_args=(w,))
    with pytest.raises(AssertionError, match="traced > 2 times"):
        nattack(_TRACED_TWICE, np.full((6, 2, 2, 1), 0.5, np.float32), np.zeros(6, np.int32), jax.random.key(5),
                epsilon=0.05, population=8, max_iterations=3, score_args=(w,))


def test_candidates_never_leave_the_box():
    x = jax.random.uniform(jax.random.key(1), (3, 2, 2, 1)).at[0].set(0.0).at[1].set(1.0)
    z = jax.random.normal(jax.random.key(2), (50, 3, 2, 2, 1)) * 5.0
    c = np.asarray(candidates(x, jnp.zeros_like(x), z, 0.1, 0.03))
    assert np.max(np.abs(c - np.asarray(x)[None])) <= 0.03 + 1e-6 and c.min() >= 0 and c.max() <= 1


def test_margin_loss_closed_form():
    p = jnp.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    np.testing.assert_allclose(np.asarray(margin_loss(p, jnp.array([0, 0]))), [np.log(3.5), 0.0], rtol=1e-6)


# ------------------------------------------------------------------------ data parallel: 4 devices = 1 device
def _noisy_linear_score(images, w, key):
    """A stochastic 3-class linear classifier with fixed randomness: input noise from ``key`` (score_args)."""
    noisy = images + 0.02 * jax.random.normal(key, images.shape, images.dtype)
    return jax.nn.softmax(noisy.reshape(noisy.shape[0], -1) @ w, -1)


def _devices_problem():
    rng = np.random.default_rng(7)
    w = rng.normal(size=(16, 3)).astype(np.float32)
    x = rng.uniform(0.3, 0.7, size=(8, 4, 4, 1)).astype(np.float32)
    y = np.argmax(x.reshape(8, -1) @ w, -1).astype(np.int32)
    return w, x, y


def _devices_run() -> dict:
    w, x, y = _devices_problem()
    out = nattack(_noisy_linear_score, x, y, jax.random.key(3), epsilon=0.17, population=40, max_iterations=25,
                  score_args=(jnp.asarray(w), jax.random.key(9)), active=np.arange(8) < 6)
    return {"devices": jax.device_count(), "success": out["success"].tolist(), "queries": out["queries"].tolist(),
            "iterations": out["iterations"], "adversarial": out["adversarial"].tolist()}


def test_nattack_on_four_devices_matches_one_device():
    """The batch of 8 (the last 2 rows masked as unused) is sharded over a 4-device mesh (forced CPU devices); the
    outcome is the one of the single-device run: same successes, queries and adversarial images."""
    import json
    import subprocess
    import sys

    from conftest import subprocess_env

    runs = {}
    for n in (1, 4):
        proc = subprocess.run([sys.executable, __file__], env=subprocess_env(n), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert runs[1]["devices"] == 1 and runs[4]["devices"] == 4
    assert 0 < sum(runs[1]["success"][:6]) < 6, runs[1]["success"]  # a non-trivial outcome: some broken, some not
    assert runs[1]["success"][6:] == [False, False] and runs[1]["queries"][6:] == [0, 0]  # masked rows untouched
    for k in ("success", "queries", "iterations"):
        assert runs[4][k] == runs[1][k], k
    np.testing.assert_allclose(np.array(runs[4]["adversarial"]), np.array(runs[1]["adversarial"]), atol=1e-6)
    w, x, _ = _devices_problem()
    adv = np.array(runs[4]["adversarial"], np.float32)
    assert np.max(np.abs(adv - x)) <= 0.17 + 1e-6


if __name__ == "__main__":  # child process of test_nattack_on_four_devices_matches_one_device
    import json

    print(json.dumps(_devices_run()))
