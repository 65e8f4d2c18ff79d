"""``smoothjax.smoothing``, kept as it was imported before SIAM's code became ``smoothjax.siam``.

SIAM's smoothed inference (the rules that combine m stochastic passes) lives in ``smoothjax.siam.inference``; this
module re-exports its public names so that existing imports keep working, the way optax keeps old paths importable.
It is not Cohen et al.'s smoothing: that is ``smoothjax.certification``.
"""

from smoothjax.siam.inference import (MODES, check_mode, class_scores, smoothed_apply_fn, smoothed_predict,
                                      smoothed_scores, stochastic_logits, top_k_classes)

__all__ = ["MODES", "check_mode", "class_scores", "smoothed_apply_fn", "smoothed_predict", "smoothed_scores",
           "stochastic_logits", "top_k_classes"]
