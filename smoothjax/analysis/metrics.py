"""Certified accuracy, average certified radius, prediction summaries and samples per image of parsed logs.

Every function takes ``EvalLog``s (``logs.read_log``); ``certified_accuracy`` and ``average_certified_radius`` also take
a result in memory, a ``certification.Certificate`` (or any object with ``prediction`` and ``radius``) or a
``(prediction, radius)`` pair of arrays, with the true ``labels`` (``as_log``). ``samples_summary`` reads the ``samples`` column of sequential
certification logs (forward passes per image, selection ``n0`` included): CERTIFY spends ``n0 + n`` on every image,
so the summary says how much the sequential test saved.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from smoothjax.analysis.logs import EvalLog


class PredictionSummary(NamedTuple):
    """Summary of a prediction (or certification) log: ``n`` rows, ``accuracy`` = fraction of rows
    predicted correctly (abstentions count as wrong), ``abstention_rate`` = fraction with
    ``predict == -1``, ``mean_time`` = mean seconds per example."""

    n: int
    accuracy: float
    abstention_rate: float
    mean_time: float


def _as_radii(radii) -> np.ndarray:
    r = np.atleast_1d(np.asarray(radii, dtype=np.float64))
    if r.ndim != 1 or r.size == 0 or not np.all(np.isfinite(r)) or np.any(r < 0):
        raise ValueError(f"radii={radii!r} not allowed; give a non-empty 1-D list of finite radii >= 0")
    return r


def as_log(result, labels=None) -> EvalLog:
    """``result`` as an ``EvalLog``: a log is returned as it is; a certificate (``prediction`` and ``radius`` fields,
    e.g. ``certification.Certificate``, jax or NumPy arrays of shape (B,)) or a ``(prediction, radius)`` pair needs
    ``labels`` (B,) ints; ``prediction == -1`` is an abstention, radii are L2 in pixel units; time is 0."""
    if isinstance(result, EvalLog):
        if labels is not None:
            raise ValueError(f"labels are not allowed with the log {result.path}: it holds its own")
        return result
    if hasattr(result, "prediction") and hasattr(result, "radius"):
        prediction, radius = result.prediction, result.radius
    elif isinstance(result, (tuple, list)) and len(result) == 2:
        prediction, radius = result
    else:
        raise ValueError(f"{type(result).__name__} is not allowed; give an EvalLog, a Certificate or a (prediction, "
                         "radius) pair")
    prediction = np.asarray(prediction, np.int64).reshape(-1)
    radius = np.asarray(radius, np.float64).reshape(-1)
    if labels is None:
        raise ValueError("labels=None is not allowed with a certificate; pass the true labels (B,)")
    label = np.asarray(labels, np.int64).reshape(-1)
    if not prediction.shape == radius.shape == label.shape:
        raise ValueError(f"shapes {prediction.shape}, {radius.shape}, {label.shape} of prediction, radius and labels "
                         "are not allowed; need three equal (B,)")
    return EvalLog("<certificate>", np.arange(label.size), label, prediction, radius, prediction == label,
                   np.zeros(label.size))


def _certification(log: EvalLog) -> EvalLog:
    if not isinstance(log, EvalLog) or log.radius is None:
        where = log.path if isinstance(log, EvalLog) else repr(log)
        raise ValueError(f"{where} is not a certification log (needs a 'radius' column)")
    if len(log) == 0:
        raise ValueError(f"{log.path}: log has no rows")
    return log


def _certified_correct(log: EvalLog) -> np.ndarray:
    return log.correct & (log.predict != -1)


def certified_accuracy(log: EvalLog, radii, labels=None) -> np.ndarray:
    """Certified accuracy at each radius: shape ``(len(radii),)`` float64 in [0, 1].

    ``log``: an ``EvalLog``, or a certificate / (prediction, radius) pair with its ``labels`` (``as_log``).

    Entry ``k`` is the fraction of ALL rows with ``correct == 1`` (and no abstention) and
    ``radius >= radii[k]`` (radii in pixel-space L2 units), as in Cohen et al. (2019)'s ``analyze.py``.
    """
    log, r = _certification(as_log(log, labels)), _as_radii(radii)
    good = _certified_correct(log)
    return np.mean(good[None, :] & (log.radius[None, :] >= r[:, None]), axis=1)


def average_certified_radius(log: EvalLog, labels=None) -> float:
    """Average certified radius (ACR): mean over all rows of ``radius`` if correct, else 0. ``log``: as in
    ``certified_accuracy`` (a certificate needs ``labels``)."""
    log = _certification(as_log(log, labels))
    return float(np.mean(np.where(_certified_correct(log), log.radius, 0.0)))


def envelope(logs: Sequence[EvalLog], radii) -> np.ndarray:
    """Best certified accuracy per radius over several logs: shape ``(len(radii),)``, the
    elementwise max of ``certified_accuracy(log, radii)`` over ``logs`` (e.g. over sigmas)."""
    return np.max(certified_accuracy_matrix(logs, radii), axis=0)


def certified_accuracy_matrix(logs: Sequence[EvalLog], radii) -> np.ndarray:
    """``certified_accuracy`` of each log stacked: shape ``(len(logs), len(radii))``."""
    if len(logs) == 0:
        raise ValueError("logs is empty; give at least one certification log")
    return np.stack([certified_accuracy(log, radii) for log in logs])


def prediction_summary(log: EvalLog) -> PredictionSummary:
    """Accuracy (abstentions count as wrong), abstention rate and mean seconds of any log."""
    if len(log) == 0:
        raise ValueError(f"{log.path}: log has no rows")
    return PredictionSummary(n=len(log), accuracy=float(np.mean(_certified_correct(log))),
                             abstention_rate=float(np.mean(log.predict == -1)),
                             mean_time=float(np.mean(log.time)))


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
