"""NAttack on an undefended linear classifier: it breaks the points whose closed-form L-inf margin is below epsilon
within its query budget, cannot break the ones whose margin is above, and never leaves the box or [0, 1]."""

import jax
import jax.numpy as jnp
import numpy as np

from smoothjax.nattack import candidates, margin_loss, nattack

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


def test_candidates_never_leave_the_box():
    x = jax.random.uniform(jax.random.key(1), (3, 2, 2, 1)).at[0].set(0.0).at[1].set(1.0)
    z = jax.random.normal(jax.random.key(2), (50, 3, 2, 2, 1)) * 5.0
    c = np.asarray(candidates(x, jnp.zeros_like(x), z, 0.1, 0.03))
    assert np.max(np.abs(c - np.asarray(x)[None])) <= 0.03 + 1e-6 and c.min() >= 0 and c.max() <= 1


def test_margin_loss_closed_form():
    p = jnp.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    np.testing.assert_allclose(np.asarray(margin_loss(p, jnp.array([0, 0]))), [np.log(3.5), 0.0], rtol=1e-6)
