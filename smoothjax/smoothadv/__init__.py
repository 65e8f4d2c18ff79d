"""SmoothAdv (Salman et al. 2019): adversarial training of Gaussian-smoothed classifiers, in one namespace.

    from smoothjax import smoothadv
    x_adv = smoothadv.smooth_pgd_l2(apply_fn, variables, x, y, noise, epsilon=0.5, num_steps=10, key=key)
    loss_fn = smoothadv.smoothadv_loss(model, sigma=0.25, attack="pgd", epsilon=0.5, num_steps=10, num_noise_vec=4)

Modules: ``attacks`` (L2 PGD and DDN on the soft smoothed classifier, budgets in pixel units), ``loss`` (the
training loss and its config, ``config.loss = 'smoothadv'`` with ``config.smoothadv``), ``finetuning``
(``config.init_from``: a trained run's variables with a new head) and ``self_training`` (pseudo-labelled batches from a
teacher run). ``smoothjax.attacks`` and ``smoothjax.smoothadv`` as imported before keep working.
"""

from smoothjax.smoothadv.attacks import (ddn_gamma_for_prediction, project_l2, smooth_ddn, smooth_pgd_l2,
                                         smoothed_cross_entropy)
from smoothjax.smoothadv.finetuning import read_pretrained, transfer_variables
from smoothjax.smoothadv.loss import ATTACKS, check_settings, loss_from_config, smoothadv_loss, warmup_epsilon
from smoothjax.smoothadv.self_training import alternating_batches, load_teacher, pseudo_label_fn, weighted

__all__ = [
    "ATTACKS", "alternating_batches", "check_settings", "ddn_gamma_for_prediction", "load_teacher",
    "loss_from_config", "project_l2", "pseudo_label_fn", "read_pretrained", "smooth_ddn", "smooth_pgd_l2",
    "smoothadv_loss", "smoothed_cross_entropy", "transfer_variables", "warmup_epsilon", "weighted",
]
