"""The log format of certify.py, defined once: file names, headers, rows, the settings sidecar, and reading.

A *certification log* is a tab-separated file with header ``idx label predict radius correct time`` (Cohen et al.
2019's format, so their analysis reads our logs and ours reads theirs); a *prediction log* has ``idx label predict
correct time``; a *sequential* log adds ``samples`` (forward passes spent on the image). ``predict == -1`` means the
smoothed classifier abstained. ``time`` is seconds (``15.4``) or a ``str(datetime.timedelta)`` (``0:00:01.737771``,
``1 day, 2:03:04.5``). Extra columns (anywhere) are kept in ``EvalLog.extra``.

Names: ``<kind>[_<part>...]_sigma_<sigma>.tsv`` (``log_name``), e.g. ``certify_sigma_0.25.tsv``,
``certify_sound_sigma_0.25.tsv`` or ``predict_pgd_eps_0.5_steps_20_m_8_sigma_0.25.tsv`` (``attack_name``). Each log
made by certify.py has a sidecar ``<log>.json`` (``settings_path``) with every setting that changed its rows, sigma
included: report sigma from there (``log_sigma``), the name is for people. The writer lives in
``smoothjax.jobs.certify_log``; ``COLUMNS`` and ``REQUIRED`` are what a validator of logs checks against.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
from pathlib import Path

import numpy as np

from smoothjax.checkpointing import read_record

COLUMNS = {  # the columns certify.py writes, per kind of log, in order
    "certify": ("idx", "label", "predict", "radius", "correct", "time"),
    "predict": ("idx", "label", "predict", "correct", "time"),
    "sequential": ("idx", "label", "predict", "radius", "correct", "time", "samples"),
}
REQUIRED = ("idx", "label", "predict", "correct", "time")  # what any log must have to be read (+ radius: certified)
_INT_COLUMNS = ("idx", "label", "predict")
_TIMEDELTA = re.compile(r"^(?:(-?\d+) days?, )?(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)$")
_ATTACK = re.compile(r"(?:^|_)(pgd|ddn)_eps_([0-9.]+(?:e-?[0-9]+)?)_steps_(\d+)_m_(\d+)(_nograd)?(_base)?(?=_sigma_|$)")
_SIGMA = re.compile(r"_sigma_([0-9.]+(?:e-?[0-9]+)?)$")


# ------------------------------------------------------------------------------------------------------ writing
def header(kind: str) -> str:
    """The header line (no newline) of a log of ``kind`` (``certify``, ``predict`` or ``sequential``)."""
    return "\t".join(COLUMNS[kind])


def format_row(kind: str, idx: int, label: int, prediction: int, radius: float, samples, seconds: float) -> str:
    """One row (with newline) in the column order of ``COLUMNS[kind]``: ``radius`` as the reference's ``{:.3}``
    (certify and sequential logs), ``correct`` = ``prediction == label``, ``time`` as ``str(timedelta)``, ``samples``
    (sequential logs) as an integer."""
    fields = [idx, label, prediction] + ([f"{float(radius):.3}"] if "radius" in COLUMNS[kind] else [])
    fields += [int(prediction == label), str(datetime.timedelta(seconds=seconds))]
    fields += [int(samples)] if "samples" in COLUMNS[kind] else []
    return "\t".join(map(str, fields)) + "\n"


def format_sigma(sigma: float) -> str:
    """The sigma part of a log name: two decimals like the reference (``0.25``, ``1.00``), else ``repr``."""
    return f"{sigma:.2f}" if round(sigma, 2) == sigma else repr(sigma)


def log_name(kind: str, sigma: float, parts=()) -> str:
    """``<kind>[_<part>...]_sigma_<sigma>.tsv``; parts (e.g. ``sound``, an ``attack_name``, a tag) keep logs made with
    other settings apart."""
    return f"{'_'.join((kind, *parts))}_sigma_{format_sigma(sigma)}.tsv"


def attack_name(attack: str, epsilon: float, num_steps: int, num_noise_vec: int, no_grad: bool = False,
                base_attack: bool = False) -> str:
    """``<attack>_eps_<epsilon>_steps_<T>_m_<m>[_nograd][_base]`` (epsilon in pixel L2 units, ``repr`` of the float),
    or ``""`` for ``attack='none'``: the name part of an attacked prediction log."""
    if attack == "none":
        return ""
    return (f"{attack}_eps_{float(epsilon)!r}_steps_{int(num_steps)}_m_{int(num_noise_vec)}"
            + ("_nograd" if no_grad else "") + ("_base" if base_attack else ""))


def settings_path(path) -> Path:
    """The settings sidecar of the log at ``path``: ``<log>.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


# ------------------------------------------------------------------------------------------------------ reading
def parse_attack(path) -> dict | None:
    """The attack settings encoded in a log's file name (``attack``, ``epsilon``, ``num_steps``, ``num_noise_vec``,
    ``no_grad``, ``base_attack``), or None when the name carries no attack."""
    match = _ATTACK.search(Path(str(path)).stem)
    if match is None:
        return None
    attack, eps, steps, m, no_grad, base = match.groups()
    return {"attack": attack, "epsilon": float(eps), "num_steps": int(steps), "num_noise_vec": int(m),
            "no_grad": bool(no_grad), "base_attack": bool(base)}


def parse_sigma(path) -> float | None:
    """The noise level ``sigma`` at the end of a log's file name (``..._sigma_0.25.tsv``), or None."""
    match = _SIGMA.search(Path(str(path)).stem)
    return float(match.group(1)) if match else None


def read_settings(path) -> dict | None:
    """The settings sidecar of the log at ``path`` as a dict, or None when there is none (e.g. a reference log).
    Raises a one-line ValueError when it exists but is not a JSON object."""
    meta = settings_path(path)
    if not meta.exists():
        return None
    return read_record(meta, "move it and its log away")


def log_sigma(path) -> float | None:
    """The sigma a log was made with: its sidecar's ``sigma`` when it has one, else the one in its name, else None."""
    settings = read_settings(path)
    if settings is not None and "sigma" in settings:
        return float(settings["sigma"])
    return parse_sigma(path)


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

    def restrict(self, idx) -> "EvalLog":
        """The rows of this log whose ``idx`` is in ``idx`` (any int sequence), in the log's order: to compare a
        partial log with a complete one on the same images. Raises a one-line ValueError when none is."""
        keep = np.isin(self.idx, np.asarray(idx, dtype=np.int64))
        if not keep.any():
            raise ValueError(f"{self.path}: none of its {len(self)} rows has an idx among the {len(idx)} asked for")
        pick = lambda a: None if a is None else a[keep]  # noqa: E731
        return dataclasses.replace(self, idx=self.idx[keep], label=self.label[keep], predict=self.predict[keep],
                                   radius=pick(self.radius), correct=self.correct[keep], time=self.time[keep],
                                   extra={k: v[keep] for k, v in self.extra.items()})


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
            if kind == "radius" and not (math.isfinite(value) and value >= 0):
                raise ValueError
            if kind == "bool" and value not in (0.0, 1.0):
                raise ValueError
            out.append(value)
        except (ValueError, OverflowError):
            allowed = {"int": "an integer", "bool": "0 or 1", "float": "a number", "time": "a time",
                       "radius": "a finite number >= 0"}[kind]
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
    (``parse_log``).
    """
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text log") from None
    return parse_log(text, path)


def parse_log(text: str, path, allow_empty: bool = False) -> EvalLog:
    """The log validator, shared by analysis (``read_log``) and certify.py's resume (``jobs.certify_log``).

    Parses the text of a log (header line, then one row per line) into an ``EvalLog``. Guarantee: every row has the
    header's field count; ``idx``, ``label`` and ``predict`` are integers, ``idx`` >= 0 and never repeated;
    ``correct`` is 0 or 1; ``radius`` is finite and >= 0; ``time`` is seconds or a timedelta. Anything else is a
    one-line ``ValueError`` naming ``path`` and the line (no header, missing/duplicate columns, wrong field count,
    unparsable value, duplicate idx, no rows unless ``allow_empty``).
    """
    path = str(path)
    lines = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), start=1)]
    lines = [(n, line) for n, line in lines if line.strip()]
    if not lines:
        raise ValueError(f"{path}: empty file; expected a tab-separated header 'idx label predict ...'")
    header = [h.strip() for h in lines[0][1].split("\t")]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ValueError(f"{path}: header {lines[0][1]!r} lacks column(s) {', '.join(missing)}; "
                         f"required (tab-separated): {', '.join(REQUIRED)} (+ radius for certification)")
    if len(set(header)) != len(header):
        raise ValueError(f"{path}: header {lines[0][1]!r} has duplicate column names")
    rows = lines[1:]
    if not rows and not allow_empty:
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
    seen = {}
    for n, idx in zip(first, parsed["idx"].tolist()):
        if idx < 0:
            raise ValueError(f"{path}: line {n}: column 'idx' has {idx}; it must be an integer >= 0")
        if idx in seen:
            raise ValueError(f"{path}: line {n}: idx {idx} already appears on line {seen[idx]}; each image is "
                             "logged once")
        seen[idx] = n
    radius = _column(path, "radius", columns["radius"], first, "radius") if "radius" in columns else None
    known = set(REQUIRED) | {"radius"}
    return EvalLog(
        path=path, radius=radius, **parsed,
        correct=_column(path, "correct", columns["correct"], first, "bool"),
        time=_column(path, "time", columns["time"], first, "time"),
        extra={name: _extra_column(cells) for name, cells in columns.items() if name not in known},
    )
