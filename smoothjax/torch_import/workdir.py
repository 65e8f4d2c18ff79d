"""Writes an imported checkpoint as a smoothjax workdir that ``checkpointing.load_model`` and ``certify.py`` read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from smoothjax import checkpointing


def write_workdir(imported, workdir, sigma: float) -> Path:
    """Saves ``imported`` (an ``ImportedCheckpoint``) as checkpoint 0 of ``workdir`` plus its ``model.json``.

    Args:
      imported: the result of ``smoothjax.torch_import.import_checkpoint``.
      workdir: a new (or empty) run directory.
      sigma: the noise level written to ``model.json`` (pixel units, > 0); ``certify.py`` uses it as its
        default ``certify.sigma``.

    Returns:
      The workdir path. The checkpoint holds ``{"step", "params", "model_state": {"batch_stats"}}`` (no optimiser
      state: the workdir is for certification and attacks, not for resuming training).

    Raises:
      ValueError when sigma is not positive or the workdir already holds checkpoints or another model.
    """
    if sigma is None or not float(sigma) > 0:
        raise ValueError(f"sigma={sigma!r} is not allowed; pass the noise level the model was trained for (> 0)")
    workdir = Path(workdir)
    spec = dict(imported.spec, sigma=float(sigma))
    checkpointing.check_model_spec(workdir, spec)
    ckpt = checkpointing.Checkpointer(workdir, max_to_keep=1)
    try:
        if ckpt.latest_step() is not None:
            raise ValueError(f"{workdir} already holds checkpoints (step {ckpt.latest_step()}); use a new --workdir")
        checkpointing.write_model_spec(workdir, spec)
        state = {"step": np.asarray(0, np.int32), "params": imported.variables["params"],
                 "model_state": {"batch_stats": imported.variables["batch_stats"]}}
        ckpt.save(0, state)
    finally:
        ckpt.close()
    return workdir
