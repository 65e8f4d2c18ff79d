"""Samples (forward passes) spent per image, from the ``samples`` column of sequential certification logs.

``certify.py --config.certify.mode=sequential`` logs, after the reference columns, how many noisy forward passes
each image took (selection ``n0`` included). CERTIFY spends ``n0 + n`` on every image; these summaries say how much
the sequential test saved. ``smoothjax.analysis`` re-exports ``samples_summary`` and prints it next to its tables.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class SamplesSummary(NamedTuple):
    """Forward passes per image over the ``n`` rows of a log: ``mean``, ``median``, ``min``, ``max``, ``total``."""

    n: int
    mean: float
    median: float
    min: int
    max: int
    total: int


def samples_summary(log) -> SamplesSummary | None:
    """Summary of ``log.extra['samples']`` (an ``analysis.EvalLog``), or None when the log has no such column.

    Raises a one-line ValueError naming the log when the column holds anything but integers >= 0.
    """
    s = log.extra.get("samples")
    if s is None:
        return None
    s = np.asarray(s)
    if s.size == 0 or not np.issubdtype(s.dtype, np.integer) or np.any(s < 0):
        raise ValueError(f"{log.path}: column 'samples' must hold integers >= 0 (forward passes per image)")
    return SamplesSummary(n=int(s.size), mean=float(np.mean(s)), median=float(np.median(s)), min=int(np.min(s)),
                          max=int(np.max(s)), total=int(np.sum(s)))


def format_samples_summary(summary: SamplesSummary, label: str = "") -> str:
    """One line: ``[label: ]samples per image: mean M, median D (min a, max b; total T over n images)``."""
    prefix = f"{label}: " if label else ""
    return (f"{prefix}samples per image: mean {summary.mean:.1f}, median {summary.median:.1f} (min {summary.min}, "
            f"max {summary.max}; total {summary.total} over {summary.n} images)")
