"""SIAM (Nemcovsky et al., "Smoothed Inference for Adversarially-Trained Models"), in one namespace.

    from smoothjax import siam
    apply_fn = models.make_stochastic_apply_fn(model)                  # one stochastic pass: (variables, x, key)
    top1 = siam.smoothed_predict(key, apply_fn, variables, x, num_samples=64, mode="vote")   # (B,) int32
    x_adv = siam.pgd_linf(apply_fn, variables, x, y, key, epsilon=8 / 255, num_steps=7, num_passes=8)   # EPGD

Modules: ``inference`` (the rules that combine m stochastic passes: vote, mean_logits, rank_weighted, single),
``linf_attacks`` (L-inf PGD / EPGD), ``nattack`` (black-box NAttack), ``loss`` (adversarial training,
``config.loss = 'siam'`` with ``config.siam``) and ``evaluation`` (the accuracy grid over noise levels, m_test and
attacks; the job around it is ``smoothjax.jobs.evaluate``). Budgets are in pixel units (images in [0, 1]).
"""

from smoothjax.siam.evaluation import ATTACKS as EVALUATION_ATTACKS
from smoothjax.siam.evaluation import (Programs, as_noise_sd, evaluate_dataset, evaluate_grid, evaluate_setting,
                                       noisy_apply_fn)
from smoothjax.siam.inference import (MODES, check_mode, class_scores, smoothed_apply_fn, smoothed_predict,
                                      smoothed_scores, stochastic_logits, top_k_classes)
from smoothjax.siam.linf_attacks import (PASS_LOOPS, expectation_gradient, expectation_loss, pgd_linf, project_linf,
                                         resolve_pass_loop)
from smoothjax.siam.loss import (ATTACKS, adversarial_training_loss, check_settings, eval_apply_fn, loss_from_config,
                                 train_mode_logits)
from smoothjax.siam.nattack import candidates, make_nattack_step, margin_loss, nattack, to_tanh_space

__all__ = [
    "ATTACKS", "EVALUATION_ATTACKS", "MODES", "PASS_LOOPS", "Programs", "adversarial_training_loss", "as_noise_sd",
    "candidates", "check_mode", "check_settings", "class_scores", "eval_apply_fn", "evaluate_dataset",
    "evaluate_grid", "evaluate_setting", "expectation_gradient", "expectation_loss", "loss_from_config",
    "make_nattack_step", "margin_loss", "nattack", "noisy_apply_fn", "pgd_linf", "project_linf", "resolve_pass_loop",
    "smoothed_apply_fn", "smoothed_predict", "smoothed_scores", "stochastic_logits", "to_tanh_space",
    "top_k_classes", "train_mode_logits",
]
