"""Reading certification and prediction logs (Cohen et al. 2019 TSV format) into ``EvalLog``.

A *certification log* is a tab-separated file with header ``idx label predict radius correct time``;
a *prediction log* has ``idx label predict correct time``. ``predict == -1`` means the smoothed
classifier abstained. ``time`` is seconds (``15.4``) or a ``str(datetime.timedelta)``
(``0:00:01.737771``, ``1 day, 2:03:04.5``). Extra columns (anywhere, e.g. the ``samples`` column of
sequential certification) are kept in ``EvalLog.extra``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np

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
