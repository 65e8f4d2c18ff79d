"""SIAM training pieces: the mixed adversarial loss against its definition, the multistep schedule and gradient
clipping against closed forms (the best-checkpoint keeper: test_checkpointing.py)."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from smoothjax import training
from smoothjax.siam.linf_attacks import pgd_linf
from smoothjax.models import get_model, make_stochastic_apply_fn
from smoothjax.siam.loss import adversarial_training_loss


def _ce(logits, y):
    return float(np.mean(-np.asarray(jax.nn.log_softmax(logits))[np.arange(len(y)), np.asarray(y)]))


@pytest.mark.parametrize("adv_weight", [0.5, 0.8])
def test_loss_is_the_weighted_mix_of_adversarial_and_clean_cross_entropy(adv_weight):
    model = get_model("small_cnn", 3, dataset="digits", width=1)
    x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1))
    y = jnp.array([0, 1, 2, 1])
    variables = model.init(jax.random.key(1), x)
    loss_fn = adversarial_training_loss(model, epsilon=0.1, num_steps=2, adv_weight=adv_weight)
    key = jax.random.key(5)
    loss, (_, metrics) = jax.jit(loss_fn)(variables["params"], {}, {"image": x, "label": y}, key)
    attack_key = jax.random.split(key, 3)[0]
    apply_fn = make_stochastic_apply_fn(model)
    x_adv = pgd_linf(apply_fn, variables, x, y, attack_key, epsilon=0.1, num_steps=2, step_size=0.025)
    clean, adv = model.apply(variables, x), model.apply(variables, x_adv)
    want = adv_weight * _ce(adv, y) + (1 - adv_weight) * _ce(clean, y)
    np.testing.assert_allclose(float(loss), want, rtol=1e-4)
    assert _ce(adv, y) > _ce(clean, y)  # the attack raised the loss
    none = adversarial_training_loss(model, attack="none")
    np.testing.assert_allclose(float(none(variables["params"], {}, {"image": x, "label": y}, key)[0]),
                               _ce(clean, y), rtol=1e-5)
    with pytest.raises(ValueError, match="adv_weight=1.5"):
        adversarial_training_loss(model, adv_weight=1.5)
    with pytest.raises(ValueError, match="pass_loop='unroll'"):
        adversarial_training_loss(model, pass_loop="unroll")


def test_multistep_schedule_divides_at_the_milestones():
    s = training.learning_rate_schedule(learning_rate=0.1, steps_per_epoch=10, lr_schedule="multistep",
                                        lr_milestones=(200, 300))
    for step, lr in [(0, 0.1), (1999, 0.1), (2000, 0.01), (2999, 0.01), (3000, 0.001), (3999, 0.001)]:
        np.testing.assert_allclose(float(s(step)), lr, rtol=1e-6, err_msg=str(step))
    with pytest.raises(ValueError, match="lr_milestones"):
        training.learning_rate_schedule(learning_rate=0.1, steps_per_epoch=10, lr_schedule="multistep")


def test_gradient_clipping_before_weight_decay_closed_form():
    tx = training.make_optimizer(learning_rate=1.0, steps_per_epoch=1, momentum=0.0, weight_decay=0.1,
                                 grad_clip_norm=0.05, lr_schedule="constant")
    params = {"w": jnp.array([1.0, 2.0])}
    g = {"w": jnp.array([3.0, 4.0])}  # norm 5 -> scaled to 0.05 * (0.6, 0.8)
    updates, _ = tx.update(g, tx.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["w"]), -(np.array([0.03, 0.04]) + 0.1 * np.array([1.0, 2.0])),
                               rtol=1e-6)
    small = {"w": jnp.array([0.01, 0.0])}  # below the threshold: unchanged
    updates, _ = tx.update(small, tx.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["w"]), -(np.array([0.01, 0.0]) + 0.1 * np.array([1.0, 2.0])),
                               rtol=1e-6)
    nesterov = training.make_optimizer(learning_rate=1.0, steps_per_epoch=1, momentum=0.9, weight_decay=0.0,
                                       nesterov=True, lr_schedule="constant")
    ref = optax.sgd(1.0, momentum=0.9, nesterov=True)
    u1, _ = nesterov.update(g, nesterov.init(params), params)
    u2, _ = ref.update(g, ref.init(params), params)
    np.testing.assert_allclose(np.asarray(u1["w"]), np.asarray(u2["w"]))
