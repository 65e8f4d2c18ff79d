"""Randomized smoothing in JAX/Flax: certified and empirical robustness (README.md, docs/layout.md)."""
