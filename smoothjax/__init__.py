"""Randomized smoothing in JAX/Flax: certified and empirical robustness (README.md, docs/layout.md).

``smoothjax.SmoothedClassifier`` (``certification.smoothed_classifier``) is the one-object entry point;
``smoothjax.ABSTAIN`` (-1) is the prediction of an abstaining CERTIFY or PREDICT. Importing ``smoothjax`` does not
import JAX (scripts set XLA flags first); ``SmoothedClassifier`` is loaded on first use.
"""

__version__ = "0.1.0"  # keep equal to pyproject.toml's version (tests/test_research_api.py checks)
ABSTAIN = -1


def __getattr__(name):
    if name == "SmoothedClassifier":
        from smoothjax.certification.smoothed_classifier import SmoothedClassifier
        return SmoothedClassifier
    raise AttributeError(f"module 'smoothjax' has no attribute {name!r}")


__all__ = ["ABSTAIN", "SmoothedClassifier", "__version__"]
