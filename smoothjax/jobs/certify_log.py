"""The resumable writer of certify.py's logs: settings checked against the sidecar, one writer, torn rows cut.

The format itself (names, headers, rows, sidecar) and its validator are ``analysis.logs``. Here: a log is only ever
continued with the settings it was made with (``check``, read-only), by one process at a time (an exclusive
``flock``, taken on the file before anything is written to it: a new log is created in place, never replaced, so
two processes starting together lock the same file and one of them stops), after its last complete row (a torn last
line, from a run killed while writing it, is cut off). Every check runs before the first byte is written, so a bad
command never touches an existing log.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from smoothjax import analysis
from smoothjax.checkpointing import write_atomically

# Keys that older sidecars lack, each with the key it replaced (or None): such a sidecar is continued, and
# upgraded in place. Data paths became data fingerprints; the checkpoint checksum came later.
_UPGRADES = {"data_fingerprint": "data_path", "checkpoint_checksum": None}


def check(path: Path, settings: dict) -> bool:
    """Read-only: raises a one-line ValueError unless the existing log at ``path`` was made with exactly ``settings``.

    Returns True when the sidecar is of an older kind, everything else equal: one that recorded the data path
    instead of the data fingerprint, or no checkpoint checksum. Its rows are continued and ``LogFile`` upgrades it."""
    old = analysis.read_settings(path)
    if old is None:
        raise ValueError(f"{path} exists but {analysis.settings_path(path).name} (its settings) does not, so it may "
                         "come from another run or code; move it away or choose another workdir")
    ignored = set()
    for new_key, old_key in _UPGRADES.items():
        if new_key not in old and (old_key is None or old_key in old):
            ignored |= {new_key, old_key}
    diff = [f"{k}={old.get(k)!r} (now {settings.get(k)!r})" for k in sorted(set(old) | set(settings), key=str)
            if k not in ignored and old.get(k) != settings.get(k)]
    if diff:
        raise ValueError(f"{path} was made with other settings ({', '.join(diff)}); move it away or choose another "
                         "workdir")
    return bool(ignored)


class LogFile:
    """A log opened for appending under an exclusive lock (created with its header and sidecar if new).

    ``done`` holds the indices of its complete rows. Raises a one-line ValueError, having changed nothing, when the
    file belongs to other settings, is not a valid log of this format (``analysis.parse_log``: e.g. a duplicated
    idx or a negative radius, naming the line), or is being written by another process.
    """

    def __init__(self, path: Path, header: str, settings: dict):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # Opened (created if absent, never truncated or replaced) and locked before anything is written: a
        # concurrent process opening the same name gets the same file and fails to take the lock.
        self._file = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+b")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise ValueError(f"{path} is being written by another certify.py process; wait for it or stop it") from None
        try:
            self.done = self._open_under_lock(header, settings)
        except BaseException:
            self._file.close()
            raise

    def _open_under_lock(self, header: str, settings: dict) -> set:
        sidecar = analysis.settings_path(self.path)
        raw = self._file.read()
        if not raw:  # new (or created by a process stopped before its header): sidecar first, then the header
            write_atomically(sidecar, json.dumps(settings, indent=2) + "\n")
            self.append(header + "\n")
            return set()
        upgrade = check(self.path, settings)
        if not raw.startswith(header.encode() + b"\n"):
            raise ValueError(f"{self.path} does not start with the header {header!r}; move it away")
        complete = raw[: raw.rfind(b"\n") + 1]
        try:
            text = complete.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{self.path}: not a UTF-8 text log; the log is damaged, move it away") from None
        try:
            log = analysis.parse_log(text, self.path, allow_empty=True)
        except ValueError as e:
            raise ValueError(f"{e}; the log is damaged, move it away") from None
        if upgrade:  # an older sidecar (data path, no checkpoint checksum) of a valid log: record them now
            write_atomically(sidecar, json.dumps(settings, indent=2) + "\n")
        if len(complete) != len(raw):
            self._file.truncate(len(complete))
        self._file.seek(0, os.SEEK_END)
        return set(log.idx.tolist())

    def append(self, rows: str) -> None:
        """Appends complete rows (text ending with a newline) and flushes them to disk."""
        self._file.write(rows.encode())
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
