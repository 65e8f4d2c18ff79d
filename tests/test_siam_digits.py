"""SIAM end to end on digits: a short L-inf adversarial training run (smoothjax.siam) against plain training of the
same stochastic ResNet-8, evaluated by smoothjax.siam.evaluation under white-box PGD-7 on the single-pass objective
(one noisy pass per step, the reference's run_attack.py), transferred to the smoothed predictor (the paper's
setting).

Claims, with fixed seeds and margins (numbers printed; run with -s to see them):
* adversarial training raises PGD accuracy of the smoothed classifier (m = 16 votes) by >= 6 points;
* on the adversarially trained model, smoothed inference (m = 16) beats a single stochastic pass (m = 1) on the same
  adversarial images by >= 8 points (input noise 0.3 makes one pass unreliable; the vote averages it out).
Measured when written (360 test images; 2 busy cores: 56 s cold, 44 s with the warm compilation cache): PGD accuracy
at m=16 adversarial 0.744 vs plain 0.619; adversarial model m=1 0.567 vs m=16 0.744 (clean 0.93-0.98).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smoothjax import data, siam, training
from smoothjax.siam import evaluation
from smoothjax.models import get_model

NOISE_SD, EPSILON, STEPS, BATCH, M = 0.3, 0.15, 150, 64, 16


def _train(model, attack: str, images, labels):
    """150 SGD steps (Nesterov, lr 0.05) of SIAM's loss: ``attack='pgd'`` = PGD-2 (step eps/2) adversarial
    training with the 0.5/0.5 mix; ``'none'`` = plain training of the same stochastic model."""
    tx = training.make_optimizer(learning_rate=0.05, steps_per_epoch=1, momentum=0.9, weight_decay=5e-4,
                                 nesterov=True, lr_schedule="constant")
    loss = siam.adversarial_training_loss(model, attack=attack, epsilon=EPSILON, num_steps=2, step_size=EPSILON / 2)
    step = jax.jit(training.make_train_step(loss, tx))
    state = training.create_train_state(model, tx, jax.random.key(0), images.shape[1:])
    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        idx = rng.integers(0, len(labels), BATCH)
        state, _ = step(state, {"image": jnp.asarray(images[idx]), "label": jnp.asarray(labels[idx])},
                        jax.random.key(1))
    return {"params": state.params, **state.model_state}


@pytest.fixture(scope="module")
def digits():
    train, test = data.get_source("digits", "train"), data.get_source("digits", "test")
    return data.load_examples(train, np.arange(len(train))), data.load_examples(test, np.arange(len(test)))


def test_adversarial_training_and_smoothing_beat_their_baselines(digits):
    t0 = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = digits
    model = get_model("cifar_resnet8_gauss", 10, dataset="digits", noise_sd=NOISE_SD)
    # One set of jitted evaluation functions for both models (variables are arguments): compiled once.
    programs = evaluation.Programs(model, mode="vote", epsilon=EPSILON, pgd_steps=7, eot_passes=1,
                                        source=None, chunk_size=None)
    acc = {}
    for attack in ("none", "pgd"):
        variables = _train(model, attack, x_train, y_train)
        rows = evaluation.evaluate_grid(model, variables, x_test, y_test, noise_sds=[NOISE_SD], m_tests=[1, M],
                                             mode="vote", attacks=["clean", "pgd"], key=jax.random.key(5),
                                             epsilon=EPSILON, batch_size=len(y_test), programs=programs)
        acc[attack] = {r["m_test"]: r for r in rows}
    seconds = time.perf_counter() - t0
    report = {f"{'adversarial' if a == 'pgd' else 'plain'} m={m}": (round(r["clean"], 3), round(r["pgd"], 3))
              for a, rows in acc.items() for m, r in rows.items()}
    print(f"\nSIAM digits (clean, PGD-7 eps={EPSILON:.2f}) accuracy, {len(y_test)} test images, noise_sd {NOISE_SD}: "
          f"{report}; {seconds:.0f} s")
    adv, plain = acc["pgd"], acc["none"]
    assert adv[M]["pgd"] >= plain[M]["pgd"] + 0.06, report  # adversarial training helps under PGD
    assert adv[M]["pgd"] >= adv[1]["pgd"] + 0.08, report  # smoothing beats a single stochastic pass
    assert adv[M]["clean"] >= 0.9 and plain[M]["clean"] >= 0.9, report  # both models learned the task
    assert adv[M]["pgd"] < adv[M]["clean"] - 0.05, report  # the attack is real
