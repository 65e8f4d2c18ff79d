"""Progress and metrics of long jobs: ``metrics.jsonl``, TensorBoard events (if tensorboardX is installed), and a
tqdm progress bar on a terminal or periodic one-line log records otherwise. Only process 0 writes."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from smoothjax.checkpointing import write_atomically


class Reporter:
    """Writes scalar metrics and shows progress over ``total`` units of work (steps, examples, ...).

    Args:
      workdir: where ``metrics.jsonl`` (one JSON object per record, appended: a resumed run continues the file)
        and TensorBoard events go; None writes no files.
      total: units of work of the whole job; ``initial`` of them are already done (a resumed run).
      unit: name of a unit, for the progress display.
      log_every_seconds: interval of the plain log lines shown when stderr is not a terminal.
      resume_step: a resumed run's step (the checkpoint it continues from). ``metrics.jsonl`` then keeps only the
        records up to that step (those after it, written before a kill, are written again) and drops torn lines,
        and a record whose step and names are already in the file is not written twice: each step's records appear
        once after any number of resumes.
    """

    def __init__(self, workdir, *, total: int, initial: int = 0, unit: str = "step", description: str = "",
                 log_every_seconds: float = 30.0, stream=None, resume_step: int | None = None):
        self.enabled = jax.process_index() == 0
        self._stream = stream or sys.stderr
        self._total, self._done, self._unit, self._desc = total, initial, unit, description
        self._start, self._start_done, self._last_line = time.time(), initial, 0.0
        self._interval = log_every_seconds
        self._jsonl = self._tb = self._bar = None
        self._seen: set = set()
        if not self.enabled:
            return
        if workdir is not None:
            Path(workdir).mkdir(parents=True, exist_ok=True)
            path = Path(workdir) / "metrics.jsonl"
            self._seen = _keep_through(path, resume_step) if resume_step is not None else set()
            self._jsonl = open(path, "a")
            try:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))
            except ImportError:
                pass
        if self._stream.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=initial, unit=unit, desc=description, file=self._stream,
                             dynamic_ncols=True)

    def advance(self, n: int = 1, **postfix) -> None:
        """Marks ``n`` more units done; ``postfix`` scalars are shown next to the bar."""
        self._done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix({k: _fmt(v) for k, v in postfix.items()}, refresh=False)
        elif time.time() - self._last_line >= self._interval or self._done >= self._total:
            self._last_line = time.time()
            rate = (self._done - self._start_done) / max(time.time() - self._start, 1e-9)
            eta = (self._total - self._done) / rate if rate > 0 else float("inf")
            extra = "".join(f" {k}={_fmt(v)}" for k, v in postfix.items())
            self.write(f"{self._desc} {self._done}/{self._total} {self._unit}s, {rate:.1f} {self._unit}/s, "
                       f"eta {_duration(eta)}{extra}")

    def scalars(self, step: int, metrics: dict) -> None:
        """Records ``metrics`` (name -> number) at ``step`` in metrics.jsonl and TensorBoard."""
        if not self.enabled:
            return
        record = {"step": int(step), "time": round(time.time(), 3),
                  **{k: float(np.asarray(v)) for k, v in metrics.items()}}
        if _identity(record) in self._seen:  # e.g. the final evaluation of a finished run that is run again
            return
        self._seen.add(_identity(record))
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("step", "time"):
                    self._tb.add_scalar(k, v, int(step))

    def write(self, line: str) -> None:
        """Prints one line without breaking the progress bar (process 0 only)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(line, file=self._stream)
        else:
            print(line, file=self._stream, flush=True)

    def close(self) -> None:
        for f in (self._bar, self._jsonl, self._tb):
            if f is not None:
                f.close()
        self._bar = self._jsonl = self._tb = None


def _identity(record: dict) -> tuple:
    return int(record["step"]), tuple(sorted(k for k in record if k not in ("step", "time")))


def _keep_through(path: Path, step: int) -> set:
    """Rewrites ``path`` (atomically, only if needed) without the records after ``step`` and without lines that are
    not whole JSON records (a torn last line); returns the identities of the records kept."""
    if not path.exists():
        return set()
    lines = path.read_text().splitlines()
    kept, seen = [], set()
    for line in lines:
        try:
            record = json.loads(line)
            identity = _identity(record)
        except (ValueError, KeyError, TypeError):
            continue
        if identity[0] <= step and identity not in seen:
            kept.append(line)
            seen.add(identity)
    if len(kept) != len(lines):
        write_atomically(path, "".join(line + "\n" for line in kept))
    return seen


def _fmt(v) -> str:
    v = float(np.asarray(v))
    return f"{v:.4g}"


def _duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
