"""Attack-free training for certified robustness: Consistency regularization and MACER, as losses of the train job.

    from smoothjax import certified_training
    loss_fn = certified_training.consistency_loss(model, sigma=0.5, num_noise_vec=2, lbd=10.0, eta=0.5)
    loss_fn = certified_training.macer_loss(model, sigma=0.5, num_noise_vec=16, lbd=12.0, beta=16.0, gamma=8.0)

Modules: ``noisy_logits`` (the logits of m noisy copies of each image, which both losses start from),
``consistency`` (Jeong & Shin 2020: ``config.loss = 'consistency'`` with ``config.consistency``) and ``macer`` (Zhai
et al. 2020: ``config.loss = 'macer'`` with ``config.macer``). Each module's docstring states its equation and the
published defaults per sigma. Noise levels are in pixel units (images in [0, 1]).
"""

from smoothjax.certified_training import consistency, macer
from smoothjax.certified_training.consistency import consistency_loss, consistency_objective, consistency_terms
from smoothjax.certified_training.macer import macer_loss, macer_objective, macer_terms
from smoothjax.certified_training.noisy_logits import mean_softmax, noisy_train_logits

__all__ = [
    "consistency", "consistency_loss", "consistency_objective", "consistency_terms", "macer", "macer_loss",
    "macer_objective", "macer_terms", "mean_softmax", "noisy_train_logits",
]
