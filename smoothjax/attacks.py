"""``smoothjax.attacks``, kept as it was imported before the SmoothAdv code became ``smoothjax.smoothadv``.

The L2 attacks on the soft smoothed classifier live in ``smoothjax.smoothadv.attacks``; this module re-exports
their public names so that existing imports keep working, the way optax keeps old paths importable.
"""

from smoothjax.smoothadv.attacks import (ddn_gamma_for_prediction, project_l2, smooth_ddn, smooth_pgd_l2,
                                         smoothed_cross_entropy)

__all__ = ["ddn_gamma_for_prediction", "project_l2", "smooth_ddn", "smooth_pgd_l2", "smoothed_cross_entropy"]
