"""Certified robustness of Gaussian-smoothed classifiers: every certificate smoothjax can issue, in one namespace.

    from smoothjax import certification
    cert = certification.certify(key, apply_fn, variables, images, sigma=0.25, n0=100, n=100_000, alpha=0.001,
                                 batch_size=1000, num_classes=10)      # prediction (B,) int32, radius (B,) pixels

The smoothed classifier is ``g(x) = argmax_c P[f(x + eps) = c]``, ``eps ~ N(0, sigma^2 I)`` in pixel units (images
in [0, 1]); ``apply_fn(variables, images) -> logits`` is the base classifier ``f``. Modules, one concept each:

* ``cohen``: Cohen et al.'s CERTIFY and PREDICT (fixed ``n``, Clopper-Pearson / binomial test) and their statistics;
* ``sequential``: the same guarantee from as few draws as each image needs, stopping once a radius grid is settled,
  with the anytime-valid ``confidence_sequences`` or one ``grid_tests`` test per radius;
* ``randomized``: CERTIFY with the randomized Clopper-Pearson bound (exact coverage, certificates depend on ``u``);
* ``sound_noise``: noise that is exact in floating point (``sound=True`` in every function above);
* ``smoothed_classifier``: ``SmoothedClassifier``, the same CERTIFY / PREDICT / counts as jitted methods.

Private modules: ``_sampling`` (the noisy class counts all of them share) and ``_host_stats`` (float64 host
statistics, rounded to the safe side). Nothing here depends on attack code.
"""

from smoothjax.certification._sampling import sample_counts
from smoothjax.certification.cohen import (ABSTAIN, Certificate, binomial_test_pvalue, certified_radius, certify,
                                           certify_from_counts, lower_confidence_bound, predict, predict_from_counts)
from smoothjax.certification.randomized import (certify_randomized, randomized_certify_from_counts,
                                                randomized_clopper_pearson_lower)
from smoothjax.certification.sequential import SequentialCertificate, certify_sequential
from smoothjax.certification.smoothed_classifier import SmoothedClassifier

__all__ = [
    "ABSTAIN", "Certificate", "SequentialCertificate", "SmoothedClassifier", "binomial_test_pvalue",
    "certified_radius", "certify", "certify_from_counts", "certify_randomized", "certify_sequential",
    "lower_confidence_bound", "predict", "predict_from_counts", "randomized_certify_from_counts",
    "randomized_clopper_pearson_lower", "sample_counts",
]
