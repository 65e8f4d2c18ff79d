"""Reading and summarising certification / prediction logs (Cohen et al. 2019 TSV format).

A *certification log* is a tab-separated file with header ``idx label predict radius correct time``;
a *prediction log* has ``idx label predict correct time``. ``predict == -1`` means the smoothed
classifier abstained. ``time`` is seconds (``15.4``) or a ``str(datetime.timedelta)``
(``0:00:01.737771``, ``1 day, 2:03:04.5``). Extra columns (anywhere, e.g. a samples-used column) are
kept in ``EvalLog.extra``; a ``samples`` column (sequential certification) is summarised per image by
``samples_summary`` (from ``smoothjax.sample_usage``), also printed by the command line. The markdown /
LaTeX tables reproduce, byte for byte, the layout of the reference ``analysis/{markdown,latex}/vary_noise_*``
files of locuslab/smoothing.

Command line::

    python -m smoothjax.analysis LOG [LOG ...] [--radii 0,0.25,0.5 | start:stop:step] [--latex]
                                 [--labels L1 L2 ...] [--plot out.png] [--no-acr]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from smoothjax.sample_usage import format_samples_summary, samples_summary

_INT_COLUMNS = ("idx", "label", "predict")
_REQUIRED = ("idx", "label", "predict", "correct", "time")
_TIMEDELTA = re.compile(r"^(?:(-?\d+) days?, )?(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)$")


@dataclasses.dataclass(frozen=True, eq=False)
class EvalLog:
    """One parsed log; every array has shape ``(n,)`` with one entry per evaluated example.

    ``idx``/``label``/``predict`` are int64 (``predict == -1``: abstention), ``radius`` is the certified
    L2 radius in pixel units (float64; ``None`` for prediction logs), ``correct`` is bool, ``time`` is
    float64 seconds; ``extra`` maps any other column name to an int64, float64 or str array.
    """

    path: str
    idx: np.ndarray
    label: np.ndarray
    predict: np.ndarray
    radius: np.ndarray | None
    correct: np.ndarray
    time: np.ndarray
    extra: dict = dataclasses.field(default_factory=dict)

    @property
    def is_certification(self) -> bool:
        """True when the log has a ``radius`` column (a certification log)."""
        return self.radius is not None

    def __len__(self) -> int:
        return int(self.idx.shape[0])


class PredictionSummary(NamedTuple):
    """Summary of a prediction (or certification) log: ``n`` rows, ``accuracy`` = fraction of rows
    predicted correctly (abstentions count as wrong), ``abstention_rate`` = fraction with
    ``predict == -1``, ``mean_time`` = mean seconds per example."""

    n: int
    accuracy: float
    abstention_rate: float
    mean_time: float


def parse_time(text: str) -> float:
    """Parses a ``time`` cell into float seconds.

    Accepts a plain number of seconds (``"15.4"``) or ``str(datetime.timedelta)`` output
    (``"0:00:01.737771"``, ``"2 days, 1:02:03"``). Raises a one-line ``ValueError`` otherwise.
    """
    s = text.strip()
    match = _TIMEDELTA.match(s)
    if match:
        days, hours, minutes, seconds = match.groups()
        return int(days or 0) * 86400.0 + int(hours) * 3600.0 + int(minutes) * 60.0 + float(seconds)
    try:
        value = float(s)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"time {text!r} is not seconds (e.g. 15.4) or a timedelta (e.g. 0:00:01.737771)")
    return value


def _column(path, name, cells, line_numbers, kind):
    """Converts one column of strings; on failure names the file, line and offending value."""
    out = []
    for i, cell in enumerate(cells):
        try:
            if kind == "time":
                out.append(parse_time(cell))
                continue
            value = float(cell)
            if math.isnan(value) or (kind in ("int", "bool") and value != int(value)):
                raise ValueError
            if kind == "bool" and value not in (0.0, 1.0):
                raise ValueError
            out.append(value)
        except (ValueError, OverflowError):
            allowed = {"int": "an integer", "bool": "0 or 1", "float": "a number", "time": "a time"}[kind]
            raise ValueError(
                f"{path}: line {line_numbers[i]}: column {name!r} has {cell!r}; it must be {allowed}"
            ) from None
    array = np.asarray(out, dtype=np.float64)
    if kind == "int":
        return array.astype(np.int64)
    return array.astype(bool) if kind == "bool" else array


def _extra_column(cells):
    for dtype in (np.int64, np.float64):
        try:
            return np.array([dtype(c) for c in cells], dtype=dtype)
        except (ValueError, OverflowError):
            pass
    return np.array(cells, dtype=str)


def read_log(path) -> EvalLog:
    """Reads a certification or prediction log (TSV with a header line) into an ``EvalLog``.

    Required columns: ``idx label predict correct time`` (+ ``radius`` for certification logs), in any
    order; other columns are kept in ``extra``. Blank lines are ignored. Raises ``FileNotFoundError``
    for a missing file and a one-line ``ValueError`` naming the path and the problem for a malformed one
    (no header, missing/duplicate columns, wrong field count, unparsable value, no rows).
    """
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text log") from None
    lines = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), start=1)]
    lines = [(n, line) for n, line in lines if line.strip()]
    if not lines:
        raise ValueError(f"{path}: empty file; expected a tab-separated header 'idx label predict ...'")
    header = [h.strip() for h in lines[0][1].split("\t")]
    missing = [c for c in _REQUIRED if c not in header]
    if missing:
        raise ValueError(f"{path}: header {lines[0][1]!r} lacks column(s) {', '.join(missing)}; "
                         f"required (tab-separated): {', '.join(_REQUIRED)} (+ radius for certification)")
    if len(set(header)) != len(header):
        raise ValueError(f"{path}: header {lines[0][1]!r} has duplicate column names")
    rows = lines[1:]
    if not rows:
        raise ValueError(f"{path}: header only, no data rows")
    fields = []
    for n, line in rows:
        parts = line.split("\t")
        if len(parts) != len(header):
            raise ValueError(f"{path}: line {n}: {len(parts)} fields, header has {len(header)}")
        fields.append(parts)
    columns = {name: [f[j].strip() for f in fields] for j, name in enumerate(header)}
    first = [n for n, _ in rows]  # file line number of each data row
    parsed = {name: _column(path, name, columns[name], first, "int") for name in _INT_COLUMNS}
    radius = _column(path, "radius", columns["radius"], first, "float") if "radius" in columns else None
    known = set(_REQUIRED) | {"radius"}
    return EvalLog(
        path=path, radius=radius, **parsed,
        correct=_column(path, "correct", columns["correct"], first, "bool"),
        time=_column(path, "time", columns["time"], first, "time"),
        extra={name: _extra_column(cells) for name, cells in columns.items() if name not in known},
    )


def _as_radii(radii) -> np.ndarray:
    r = np.atleast_1d(np.asarray(radii, dtype=np.float64))
    if r.ndim != 1 or r.size == 0 or not np.all(np.isfinite(r)) or np.any(r < 0):
        raise ValueError(f"radii={radii!r} not allowed; give a non-empty 1-D list of finite radii >= 0")
    return r


def _certification(log: EvalLog) -> EvalLog:
    if not isinstance(log, EvalLog) or log.radius is None:
        where = log.path if isinstance(log, EvalLog) else repr(log)
        raise ValueError(f"{where} is not a certification log (needs a 'radius' column)")
    if len(log) == 0:
        raise ValueError(f"{log.path}: log has no rows")
    return log


def _certified_correct(log: EvalLog) -> np.ndarray:
    return log.correct & (log.predict != -1)


def certified_accuracy(log: EvalLog, radii) -> np.ndarray:
    """Certified accuracy at each radius: shape ``(len(radii),)`` float64 in [0, 1].

    Entry ``k`` is the fraction of ALL rows with ``correct == 1`` (and no abstention) and
    ``radius >= radii[k]`` (radii in pixel-space L2 units), as in Cohen et al. (2019)'s ``analyze.py``.
    """
    log, r = _certification(log), _as_radii(radii)
    good = _certified_correct(log)
    return np.mean(good[None, :] & (log.radius[None, :] >= r[:, None]), axis=1)


def average_certified_radius(log: EvalLog) -> float:
    """Average certified radius (ACR): mean over all rows of ``radius`` if correct, else 0."""
    log = _certification(log)
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


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; keep errors to one line, exit 2
        self.exit(2, f"error: {message} (see --help)\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="python -m smoothjax.analysis",
        description="Certified-accuracy tables (markdown or LaTeX) and summaries of certify/predict logs.")
    parser.add_argument("logs", nargs="+", metavar="LOG", help="certification or prediction TSV logs")
    parser.add_argument("--radii", help="comma list (0,0.25,0.5) or start:stop:step (stop inclusive)")
    parser.add_argument("--latex", action="store_true", help="print a LaTeX table instead of markdown")
    parser.add_argument("--labels", nargs="+", help="one row label per LOG (default: the paths)")
    parser.add_argument("--plot", metavar="OUT.png", help="also write a certified-accuracy plot")
    parser.add_argument("--no-acr", action="store_true", help="omit the ACR column (reference layout)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; prints tables/summaries to stdout. Returns 0, or 2 after a one-line error."""
    args = _build_parser().parse_args(argv)
    try:
        labels = args.labels if args.labels is not None else list(args.logs)
        if len(labels) != len(args.logs):
            raise ValueError(f"{len(labels)} --labels for {len(args.logs)} logs; give one label per LOG")
        logs = [read_log(p) for p in args.logs]
        cert = [(log, lab) for log, lab in zip(logs, labels) if log.is_certification]
        pred = [(log, lab) for log, lab in zip(logs, labels) if not log.is_certification]
        if cert:
            cert_logs, cert_labels = [c[0] for c in cert], [c[1] for c in cert]
            radii = parse_radii(args.radii) if args.radii else default_radii(cert_logs)
            table = latex_table if args.latex else markdown_table
            sys.stdout.write(table(cert_logs, cert_labels, radii, acr=not args.no_acr))
        elif args.radii:
            parse_radii(args.radii)  # still reject malformed input
        for log, label in zip(logs, labels):  # Sequential logs: samples per image, next to the table.
            if (samples := samples_summary(log)) is not None:
                print(format_samples_summary(samples, label))
        for log, label in pred:
            s = prediction_summary(log)
            print(f"{label}: n={s.n} accuracy={s.accuracy:.4f} abstention={s.abstention_rate:.4f} "
                  f"mean_time={s.mean_time:.3f}s")
        if args.plot:
            if not cert:
                raise ValueError("--plot needs at least one certification log (with a radius column)")
            plot_certified_accuracy(cert, args.plot, radii if args.radii else None)
    except (ValueError, OSError, ImportError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if isinstance(error, OSError) and error.filename is not None:
            message = f"{error.filename}: {error.strerror or error}"
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
