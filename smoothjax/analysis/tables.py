"""Certified-accuracy tables and plots, and one-line summaries. The markdown / LaTeX tables reproduce, byte for byte,
the layout of the reference ``analysis/{markdown,latex}/vary_noise_*`` files of locuslab/smoothing."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from smoothjax.analysis.logs import EvalLog
from smoothjax.analysis.metrics import SamplesSummary, _as_radii, _certified_correct, average_certified_radius, \
    certified_accuracy, certified_accuracy_matrix


def _table_values(logs, labels, radii, acr):
    r = _as_radii(radii)
    if len(labels) != len(logs):
        raise ValueError(f"{len(labels)} labels for {len(logs)} logs; give one label per log")
    acc = certified_accuracy_matrix(logs, r)
    if acr:
        acc = np.concatenate([acc, [[average_certified_radius(log)] for log in logs]], axis=1)
    # Reference rule: per column, the row with the largest unrounded value is marked; ties -> first row.
    return r, acc, np.argmax(acc, axis=0)


def _cell(value, column, n_radii):
    return f"{value:.3f}" if column >= n_radii else f"{value:.2f}"


def markdown_table(logs: Sequence[EvalLog], labels: Sequence[str], radii, acr: bool = False) -> str:
    """Certified-accuracy table in the reference markdown layout; returns the text (ends with a newline).

    Header ``|  | r = 0.25 |r = 0.5 |...`` (radii formatted ``{:.3}``), values ``{:.2f}``; per column the
    row with the largest unrounded accuracy (first row on ties) gets ``<b>*</b>``. Labels are used
    verbatim (the reference uses ``&sigma; = 0.25``). ``acr=True`` appends an ``ACR`` column (``{:.3f}``).
    """
    r, acc, best = _table_values(logs, labels, radii, acr)
    heads = [f"r = {float(x):.3}" for x in r] + (["ACR"] if acr else [])
    out = ["|  | " + "".join(f"{h} |" for h in heads), "| --- | " + " --- |" * len(heads)]
    for i, label in enumerate(labels):
        cells = [_cell(v, j, len(r)) + ("<b>*</b>" if best[j] == i else "") for j, v in enumerate(acc[i])]
        out.append(f"<b> {label} </b>| " + "".join(f"{c} |" for c in cells))
    return "\n".join(out) + "\n"


def latex_table(logs: Sequence[EvalLog], labels: Sequence[str], radii, acr: bool = False) -> str:
    """Certified-accuracy table body in the reference LaTeX layout (header row, ``\\midrule``, one row
    per log; best per column in ``\\textbf{}``, first row on ties). Labels verbatim (the reference uses
    ``$\\sigma = 0.25$``). ``acr=True`` appends an ``ACR`` column. Returns text ending with a newline."""
    r, acc, best = _table_values(logs, labels, radii, acr)
    heads = [f"$r = {float(x):.3}$" for x in r] + (["ACR"] if acr else [])
    out = ["".join(f"& {h}" for h in heads) + "\\\\", "\\midrule"]
    for i, label in enumerate(labels):
        cells = [_cell(v, j, len(r)) for j, v in enumerate(acc[i])]
        cells = [f"\\textbf{{{c}}}" if best[j] == i else c for j, c in enumerate(cells)]
        out.append(label + "".join(f" & {c}" for c in cells) + "\\\\")
    return "\n".join(out) + "\n"


def parse_radii(text: str) -> np.ndarray:
    """Parses ``"0,0.25,0.5"`` or ``"start:stop:step"`` (stop inclusive, like the reference's
    ``np.arange(start, stop + step, step)``) into a float64 array of radii >= 0."""
    bad = f"radii {text!r} not allowed; use a comma list like 0,0.25,0.5 or start:stop:step with step > 0"
    try:
        if ":" in text:
            start, stop, step = (float(p) for p in text.split(":"))
            if not (step > 0 and stop >= start and math.isfinite(stop) and (stop - start) / step < 1e5):
                raise ValueError
            return _as_radii(start + step * np.arange(int(math.floor((stop - start) / step + 1e-9)) + 1))
        return _as_radii([float(p) for p in text.split(",")])
    except ValueError:
        raise ValueError(bad) from None


def default_radii(logs: Sequence[EvalLog]) -> np.ndarray:
    """Radii 0, s, 2s, ... covering the largest finite certified radius, with s in {0.25 * 2^k} chosen
    so there are at most 9 columns."""
    radii = [log.radius[_certified_correct(log) & np.isfinite(log.radius)] for log in logs]
    top = max((float(np.max(x)) for x in radii if x.size), default=0.0)
    step = 0.25
    while top / step > 8:
        step *= 2
    return step * np.arange(int(math.ceil(top / step - 1e-9)) + 1)


def plot_certified_accuracy(logs_with_labels, path, radii=None) -> None:
    """Writes a PNG plot of certified accuracy (y, [0, 1]) against L2 radius (x) to ``path``.

    ``logs_with_labels``: an ``EvalLog`` or a sequence of ``(EvalLog, label)`` pairs. ``radii``
    defaults to 501 points from 0 to the largest finite certified radius. Needs matplotlib (optional
    extra ``plot``); uses the Agg canvas without touching pyplot's global backend.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plot_certified_accuracy needs matplotlib: pip install smoothjax[plot]") from None
    pairs = [(logs_with_labels, logs_with_labels.path)] if isinstance(logs_with_labels, EvalLog) \
        else list(logs_with_labels)
    if not pairs:
        raise ValueError("logs_with_labels is empty; give at least one (log, label) pair")
    if radii is None:
        top = float(default_radii([log for log, _ in pairs])[-1])
        radii = np.linspace(0.0, max(top, 0.25), 501)
    r = _as_radii(radii)
    fig = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for log, label in pairs:
        ax.plot(r, certified_accuracy(log, r), label=str(label))
    ax.set_ylim(0, 1)
    ax.set_xlim(float(r.min()), float(r.max()) if r.max() > r.min() else float(r.min()) + 1.0)
    ax.set_xlabel("radius (L2)")
    ax.set_ylabel("certified accuracy")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(str(path), format="png")


def format_samples_summary(summary: SamplesSummary, label: str = "") -> str:
    """One line: ``[label: ]samples per image: mean M, median D (min a, max b; total T over n images)``."""
    prefix = f"{label}: " if label else ""
    return (f"{prefix}samples per image: mean {summary.mean:.1f}, median {summary.median:.1f} (min {summary.min}, "
            f"max {summary.max}; total {summary.total} over {summary.n} images)")
