"""The resumable writer of certify.py's logs: settings checked against the sidecar, one writer, torn rows cut.

The format itself (names, headers, rows, sidecar) is ``analysis.logs``. Here: a log is only ever continued with the
settings it was made with (``check``, read-only), by one process at a time (an exclusive ``flock``), after its last
complete row (a torn last line, from a run killed while writing it, is cut off). Every check runs before the first
byte is written, so a bad command never touches an existing log.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from smoothjax import analysis
from smoothjax.checkpointing import write_atomically

# Sidecars written before data fingerprints recorded the machine's absolute data path instead.
_LEGACY_DATA_KEY, _DATA_KEY = "data_path", "data_fingerprint"


def check(path: Path, settings: dict) -> bool:
    """Read-only: raises a one-line ValueError unless the existing log at ``path`` was made with exactly ``settings``.

    Returns True when the sidecar is of the older kind that recorded a data path instead of a data fingerprint
    (everything else equal): its rows are continued and ``LogFile`` upgrades the sidecar."""
    old = analysis.read_settings(path)
    if old is None:
        raise ValueError(f"{path} exists but {analysis.settings_path(path).name} (its settings) does not, so it may "
                         "come from another run or code; move it away or choose another workdir")
    legacy = _LEGACY_DATA_KEY in old and _DATA_KEY not in old
    ignored = {_LEGACY_DATA_KEY, _DATA_KEY} if legacy else set()
    diff = [f"{k}={old.get(k)!r} (now {settings.get(k)!r})" for k in sorted(set(old) | set(settings), key=str)
            if k not in ignored and old.get(k) != settings.get(k)]
    if diff:
        raise ValueError(f"{path} was made with other settings ({', '.join(diff)}); move it away or choose another "
                         "workdir")
    return legacy


class LogFile:
    """A log opened for appending under an exclusive lock (created with its header and sidecar if new).

    ``done`` holds the indices of its complete rows. Raises a one-line ValueError, having changed nothing, when the
    file belongs to other settings, is not a log of this format, or is being written by another process.
    """

    def __init__(self, path: Path, header: str, settings: dict):
        sidecar = analysis.settings_path(path)
        if path.exists():
            if check(path, settings):  # an older sidecar (data path, no fingerprint): record the data now
                write_atomically(sidecar, json.dumps(settings, indent=2) + "\n")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(sidecar, json.dumps(settings, indent=2) + "\n")
            write_atomically(path, header + "\n")
        self.path, self._file = path, open(path, "r+b")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise ValueError(f"{path} is being written by another certify.py process; wait for it or stop it") from None
        try:
            self.done = self._complete_rows(header)
        except BaseException:
            self._file.close()
            raise

    def _complete_rows(self, header: str) -> set:
        raw = self._file.read()
        if not raw.startswith(header.encode() + b"\n"):
            raise ValueError(f"{self.path} does not start with the header {header!r}; move it away")
        complete = raw[: raw.rfind(b"\n") + 1]
        done, width = set(), header.count("\t") + 1
        for number, line in enumerate(complete.splitlines()[1:], start=2):
            fields = line.split(b"\t")
            if len(fields) != width or not fields[0].isdigit():
                raise ValueError(f"{self.path}: line {number} ({line[:60]!r}) is not a row of {width} fields; the "
                                 "log is damaged, move it away")
            done.add(int(fields[0]))
        if len(complete) != len(raw):
            self._file.truncate(len(complete))
        self._file.seek(0, os.SEEK_END)
        return done

    def append(self, rows: str) -> None:
        """Appends complete rows (text ending with a newline) and flushes them to disk."""
        self._file.write(rows.encode())
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
