"""Keep the best checkpoint of a run by one evaluation metric (``config.keep_best_by``, e.g. SIAM's smoothed clean
accuracy ``clean_accuracy``).

The best state is an ordinary checkpoint under ``workdir/best/checkpoints`` (restorable with
``checkpointing.Checkpointer(workdir / "best")``, same state layout as the run's own checkpoints) and
``workdir/best/best.json`` records ``{"metric", "value", "step"}``; a resumed run reads it back, so "best" means
best over the whole run. Higher is better.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax

from smoothjax.atomic_files import write_atomically
from smoothjax.checkpointing import Checkpointer


class BestCheckpoint:
    """Saves the state whenever ``results[metric]`` beats every earlier value of the run.

    Args:
      workdir: the run directory (the best state goes to ``workdir/best``).
      metric: key of the evaluation results to maximise (e.g. ``clean_accuracy``).
    """

    def __init__(self, workdir, metric: str):
        if not metric or not isinstance(metric, str):
            raise ValueError(f"keep_best_by={metric!r} is not allowed; name an evaluation metric, e.g. clean_accuracy")
        self.metric = metric
        self.directory = Path(workdir).absolute() / "best"
        self._record = self.directory / "best.json"
        self.value, self.step = -math.inf, None
        if self._record.exists():
            saved = json.loads(self._record.read_text())
            if saved.get("metric") == metric:
                self.value, self.step = float(saved["value"]), int(saved["step"])
        self._ckpt = Checkpointer(self.directory, max_to_keep=1)

    def update(self, step: int, results: dict, state) -> bool:
        """Saves ``state`` as the best one when ``results[metric]`` > the best so far; returns whether it did."""
        if self.metric not in results:
            raise ValueError(f"keep_best_by={self.metric!r} is not an evaluation metric; have: "
                             f"{', '.join(sorted(results))}")
        value = float(results[self.metric])
        if not value > self.value:
            return False
        self.value, self.step = value, int(step)
        self._ckpt.save(step, state)
        self._ckpt.wait()  # best.json never names a checkpoint still being written.
        if jax.process_index() == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomically(self._record, json.dumps({"metric": self.metric, "value": value, "step": int(step)}))
        return True

    def close(self) -> None:
        """Waits for pending writes."""
        self._ckpt.close()
