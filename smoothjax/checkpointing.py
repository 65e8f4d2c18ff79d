"""Checkpoints of training runs: periodic, atomic, last-k or best-k, resumable, and loadable as plain NumPy.

A workdir holds ``checkpoints/<step>/`` (orbax, written to a temporary directory and renamed when complete, so a
kill at any moment leaves either the previous or the new checkpoint, never half of one) and ``model.json``, the
description of the model the checkpoints belong to (name, classes, normalisation, input shape, training sigma).
Checkpoints are restored as NumPy arrays and then placed on the current mesh, so a checkpoint written on 4
devices (or a pod) loads on 1. ``Checkpointer(..., best_metric=...)`` keeps the best checkpoints by an evaluation
metric instead of the newest (orbax's ``best_fn``; ``config.keep_best_by`` keeps ``workdir/best``). Every other file
of a run is written with ``write_atomically``, so a kill never leaves half a file.

Integrity: once a checkpoint is complete, ``checkpoints/<step>/checksums.json`` records the sha256 of each of its
files (written atomically; ``Checkpointer.save`` waits for the checkpoint, then writes it). Every restore verifies
the files first (``verify_checkpoint``): a flipped, truncated or missing file is a one-line ValueError naming the
file, before any of it is read. A checkpoint without ``checksums.json`` (written by an earlier version, or by a run
killed between the checkpoint and its checksums) is complete as far as orbax knows: it is accepted with a one-line
note and its checksum is computed from its files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

# The keys of model.json that must agree for a workdir's checkpoints to fit a model.
MODEL_KEYS = ("model", "num_classes", "dataset", "normalization", "model_kwargs", "image_shape")


def _checkpoint_dir(workdir) -> Path:
    return Path(workdir).absolute() / "checkpoints"


def write_atomically(path, content: str | Callable[[Path], object]) -> None:
    """Writes ``path`` in one step: to a temporary sibling first, then ``os.replace`` onto ``path``.

    Args:
      path: destination file (its directory must exist).
      content: the text to write, or ``write(tmp_path)`` that writes the file (e.g. ``fig.savefig``).

    Guarantee: ``os.replace`` is atomic on POSIX and Windows within one file system, so a killed process leaves
    either the previous ``path`` or the complete new one (plus, at worst, a stray ``.<name>.tmp<pid>``).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if callable(content):
        content(tmp)
    else:
        tmp.write_text(content)
    os.replace(tmp, path)


def read_record(path, remedy: str) -> dict:
    """The JSON object in the small record file ``path`` (model.json, train_settings.json, a log's sidecar).

    Raises a one-line ValueError naming ``path`` and ending in ``remedy`` when the file cannot be read, is not
    JSON, or holds something other than a JSON object.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is unreadable ({type(e).__name__}); {remedy}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} holds a JSON {type(record).__name__}, not an object; {remedy}")
    return record


@contextlib.contextmanager
def _orbax_errors_only():
    """Silences absl warnings (orbax's) for a while: a damaged checkpoint gets one clear error line instead."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


CHECKSUMS = "checksums.json"  # in each checkpoint's directory: {"files": {relative path: sha256 hex}, "checksum"}
_BLOCK = 1 << 20


_DIGESTS: dict = {}  # (path, inode, size, mtime_ns, ctime_ns) -> sha256 hex: one pass per file per process


def _file_digest(path: Path) -> str:
    """sha256 (hex) of one file, hashed once per process while its inode, size, mtime and ctime are unchanged (a
    rewrite in place changes ctime), so the checksum a job records and the one load_variables verifies cost one pass.
    """
    st = path.stat()
    key = (str(path.absolute()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(_BLOCK):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def _file_digests(step_dir: Path) -> dict:
    """sha256 (hex) of every file under ``step_dir`` except the checksums file, by POSIX path relative to it."""
    return {path.relative_to(step_dir).as_posix(): _file_digest(path)
            for path in sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != CHECKSUMS)}


def _combined(digests: dict) -> str:
    """``'sha256:<hex>'`` of the sorted (path, file digest) pairs: one string naming the checkpoint's bytes."""
    return "sha256:" + hashlib.sha256(json.dumps(sorted(digests.items())).encode()).hexdigest()


def write_checksums(step_dir) -> str:
    """Records the sha256 of every file of the complete checkpoint ``step_dir`` in ``step_dir/checksums.json``
    (atomically) and returns the checkpoint's checksum (``'sha256:<hex>'``). Process 0 only writes."""
    step_dir = Path(step_dir)
    digests = _file_digests(step_dir)
    checksum = _combined(digests)
    if jax.process_index() == 0:
        write_atomically(step_dir / CHECKSUMS, json.dumps({"checksum": checksum, "files": digests}, indent=1) + "\n")
    return checksum


def verify_checkpoint(step_dir) -> tuple[str, bool]:
    """Checks every file of checkpoint ``step_dir`` against its ``checksums.json``; returns ``(checksum, recorded)``.

    ``recorded`` is False for a checkpoint without checksums (an earlier version's, or one whose run was killed
    between the checkpoint and its checksums): its checksum is then computed from its files, unverified. Raises a
    one-line ValueError naming the first file that is missing, extra or differs (e.g. one flipped byte), and the
    checkpoint, when the checkpoint is damaged. Cost: one sha256 pass over the checkpoint's bytes.
    """
    step_dir = Path(step_dir)
    if not step_dir.is_dir():
        raise ValueError(f"checkpoint {step_dir} does not exist")
    digests = _file_digests(step_dir)
    record_path = step_dir / CHECKSUMS
    if not record_path.exists():
        if not digests:
            raise ValueError(f"checkpoint {step_dir} cannot be loaded: it holds no file (damaged); delete it")
        return _combined(digests), False
    try:
        record = json.loads(record_path.read_text())
        expected = dict(record["files"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"checkpoint {step_dir} is damaged: {CHECKSUMS} is unreadable ({type(e).__name__})") from None
    for name in sorted(set(expected) | set(digests)):
        if name not in digests:
            problem = "is missing"
        elif name not in expected:
            problem = "is not in its checksums"
        elif digests[name] != expected[name]:
            problem = "differs from its checksum"
        else:
            continue
        raise ValueError(f"checkpoint {step_dir} is damaged: file {name} {problem}")
    return _combined(digests), True


def checkpoint_checksum(workdir, step: int) -> str:
    """The verified checksum (``'sha256:<hex>'``) of checkpoint ``step`` of ``workdir``: what a certify sidecar
    records. A checkpoint without checksums is accepted with a one-line note (stderr); a damaged one raises a
    one-line ValueError."""
    step_dir = _checkpoint_dir(workdir) / str(step)
    try:
        checksum, recorded = verify_checkpoint(step_dir)
    except ValueError as e:
        raise ValueError(f"{e}; train.py on {workdir} moves it aside and trains again from the newest intact "
                         "checkpoint") from None
    if not recorded:
        _note(f"note: checkpoint {step_dir} has no {CHECKSUMS} (an earlier version's, or its run was stopped "
              "before writing it); accepted unverified, checksum computed from its files")
    return checksum


_NOTED: set = set()


def _note(line: str) -> None:
    """Prints a one-line note to stderr (process 0), once per process."""
    if jax.process_index() == 0 and line not in _NOTED:
        _NOTED.add(line)
        print(line, file=sys.stderr, flush=True)


def latest_step(workdir) -> int:
    """The newest complete checkpoint step of ``workdir``, read without creating or cleaning anything; a one-line
    ValueError when there is none."""
    directory = _checkpoint_dir(workdir)
    step = None
    if directory.is_dir():
        with _orbax_errors_only():
            manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
            step = manager.latest_step()
            manager.close()
    if step is None:
        raise ValueError(f"no checkpoint in {directory}; train first (train.py --workdir={workdir})")
    return int(step)


def has_checkpoints(workdir) -> bool:
    """Whether ``workdir/checkpoints`` holds any checkpoint step directory (complete or not), read-only."""
    directory = _checkpoint_dir(workdir)
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def resume_step(workdir) -> int | None:
    """The newest intact checkpoint step of ``workdir`` for a training resume, or None when there is none.

    Checkpoints are verified newest first (``verify_checkpoint``). A damaged one is moved out of the way, to
    ``workdir/damaged_checkpoints/<step>`` (kept for inspection, never deleted), with a one-line note naming it and the
    checkpoint resumed from instead; one without checksums (an earlier version's, or a kill between a checkpoint and
    its checksums) is accepted with a one-line note and gets its checksums now. Training is a function of (seed,
    step), so resuming from an older checkpoint ends with the same parameters.
    """
    directory = _checkpoint_dir(workdir)
    # Read-only first, the same on every process (no orbax call: its managers synchronise processes).
    steps = sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir()), reverse=True) \
        if directory.is_dir() else []
    step, recorded, damaged = None, True, []
    for candidate in steps:
        try:
            _, recorded = verify_checkpoint(directory / str(candidate))
        except ValueError as e:
            damaged.append((candidate, str(e)))
            continue
        step = candidate
        break
    _sync("smoothjax.checkpointing.resume_step.verified")  # every process has read before any file moves
    if step is not None and not recorded:
        _note(f"note: checkpoint {directory / str(step)} has no {CHECKSUMS} (an earlier version's, or its run "
              "was stopped before writing it); accepted, its checksums recorded now")
        write_checksums(directory / str(step))
    aside = Path(workdir).absolute() / "damaged_checkpoints"
    for bad, why in damaged:
        target = aside / str(bad)
        if jax.process_index() == 0:
            aside.mkdir(exist_ok=True)
            if target.exists():
                target = aside / f"{bad}.{os.getpid()}"
            os.replace(directory / str(bad), target)
        _note(f"{why}; moved to {target}; "
              + (f"resuming from checkpoint {step}, the newest intact one" if step is not None
                 else "no intact checkpoint is left: training starts from step 0"))
    _sync("smoothjax.checkpointing.resume_step.moved")
    return step


def _sync(name: str) -> None:
    """A barrier of all processes (nothing on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def write_model_spec(workdir, spec: dict) -> None:
    """Writes ``workdir/model.json`` atomically (process 0 only); ``spec`` must hold every key of ``MODEL_KEYS``."""
    missing = [k for k in MODEL_KEYS if k not in spec]
    if missing:
        raise ValueError(f"model spec lacks {', '.join(missing)}")
    if jax.process_index() != 0:
        return
    path = Path(workdir) / "model.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(spec, indent=2, sort_keys=True) + "\n")


def read_model_spec(workdir) -> dict | None:
    """Returns the dict in ``workdir/model.json``, or None when the workdir has none."""
    path = Path(workdir) / "model.json"
    if not path.exists():
        return None
    return read_record(path, "delete it or use another workdir")


def check_model_spec(workdir, spec: dict) -> None:
    """Raises a one-line ValueError when ``workdir`` already belongs to a different model than ``spec``."""
    old = read_model_spec(workdir)
    if old is None:
        return
    diff = [k for k in MODEL_KEYS if _jsonable(old.get(k)) != _jsonable(spec.get(k))]
    if diff:
        k = diff[0]
        raise ValueError(f"workdir {workdir} holds checkpoints of another model ({k}={old.get(k)!r}, this run has "
                         f"{k}={spec.get(k)!r}); use a new --workdir or delete the old one")


def _jsonable(value):
    return json.loads(json.dumps(value))


class Checkpointer:
    """Saves and restores a run's state (any pytree of arrays) under ``workdir/checkpoints``.

    Args:
      workdir: the run directory.
      max_to_keep: how many checkpoints to keep (>= 1): the newest ones, or with ``best_metric`` the best ones.
      best_metric: keep the checkpoints with the highest ``metrics[best_metric]`` (orbax ``best_fn``, ``best_mode``
        max); ``save`` then needs ``metrics``. The values are stored with the checkpoints, so "best" spans restarts.
    """

    def __init__(self, workdir, *, max_to_keep: int = 3, best_metric: str | None = None):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep={max_to_keep} is not allowed; it must be >= 1")
        best: Callable | None = None
        if best_metric is not None:
            if not best_metric or not isinstance(best_metric, str):
                raise ValueError(f"keep_best_by={best_metric!r} is not allowed; name an evaluation metric, e.g. "
                                 "clean_accuracy")
            best = lambda metrics: float(metrics[best_metric])  # noqa: E731
        self.best_metric = best_metric
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
                                               best_fn=best, best_mode="max")
        self._manager = ocp.CheckpointManager(_checkpoint_dir(workdir), options=options,
                                              item_handlers=ocp.PyTreeCheckpointHandler())

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The step of the best checkpoint kept (the newest without ``best_metric``), or None."""
        return self._manager.best_step()

    def metrics(self, step: int) -> dict | None:
        """The metrics saved with checkpoint ``step`` (``best_metric`` runs), or None."""
        return self._manager.metrics(step)

    def save(self, step: int, state, metrics: dict | None = None) -> None:
        """Writes ``state`` as checkpoint ``step`` (atomic: renamed into place when complete), waits for it and records
        its checksums (``checksums.json``): on return the checkpoint is complete and verifiable. With
        ``best_metric``, ``metrics`` (name -> number) must hold it: orbax then keeps the best ``max_to_keep``."""
        if self.best_metric is not None:
            if metrics is None or self.best_metric not in metrics:
                raise ValueError(f"keep_best_by={self.best_metric!r} is not an evaluation metric; have: "
                                 f"{', '.join(sorted(metrics or {}))}")
            metrics = {k: float(v) for k, v in metrics.items()}
        self._manager.save(int(step), args=ocp.args.PyTreeSave(state), metrics=metrics, force=True)
        self._manager.wait_until_finished()  # the checkpoint is complete (renamed into place): record its checksums
        if int(step) in self._manager.all_steps():  # (orbax may have dropped it at once: not among the best)
            write_checksums(Path(self._manager.directory) / str(int(step)))

    def restore(self, target, step: int | None = None, shardings=None):
        """Restores checkpoint ``step`` (default: latest) into the structure of ``target``.

        ``target`` is a pytree of arrays or ``jax.ShapeDtypeStruct``s. With ``shardings`` (a matching pytree of
        ``jax.sharding.Sharding``) the result holds global jax.Arrays placed accordingly; without, NumPy arrays.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise ValueError(f"no checkpoint in {self._manager.directory}")
        verify_checkpoint(Path(self._manager.directory) / str(step))
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
        try:
            restored = self._manager.restore(step, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args))
        except Exception as e:  # orbax raises many types; the user needs to know which checkpoint is bad.
            raise ValueError(f"checkpoint {self._manager.directory}/{step} cannot be restored into this model "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        _check_shapes(target, restored, f"{self._manager.directory}/{step}")
        if shardings is None:
            return restored
        return jax.tree.map(_place, restored, shardings)

    def wait(self) -> None:
        """Blocks until pending saves are complete."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _check_shapes(target, restored, where: str) -> None:
    for (path, t), r in zip(jax.tree_util.tree_leaves_with_path(target), jax.tree.leaves(restored)):
        if tuple(t.shape) != tuple(np.shape(r)):
            raise ValueError(f"checkpoint {where}: {jax.tree_util.keystr(path)} has shape {np.shape(r)}, "
                             f"the model expects {tuple(t.shape)}")


def _place(value, sharding):
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def load_variables(workdir, step: int | None = None) -> dict:
    """Loads the Flax variables dict (``{"params": ..., "batch_stats": ...}``, NumPy leaves) of a trained model.

    Args:
      workdir: a training run's directory.
      step: which checkpoint (default: the latest).

    Returns:
      The variables as written by training, usable with ``make_apply_fn(model)`` on any device count. Raises a
      one-line ValueError when there is no checkpoint or it is empty or damaged.
    """
    step = latest_step(workdir) if step is None else step
    checkpoint_checksum(workdir, step)  # before orbax reads a byte: a damaged checkpoint is one line, naming the file
    try:
        with _orbax_errors_only():
            manager = ocp.CheckpointManager(_checkpoint_dir(workdir), item_handlers=ocp.PyTreeCheckpointHandler())
            metadata = manager.item_metadata(step)
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), dict(metadata))
            restored = manager.restore(step, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    except Exception as e:  # orbax raises many types (ValueError too) for an empty or half-deleted checkpoint.
        _quiet_closed_loop_callbacks()
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"checkpoint {_checkpoint_dir(workdir) / str(step)} cannot be loaded ({type(e).__name__}: "
                         f"{first}); it is empty or damaged, train again or delete it") from None
    return {"params": restored["params"], **(restored.get("model_state") or {})}


def _is_closed_loop_callback(exc_type, exc, tb) -> bool:
    """True for the RuntimeError a late tensorstore read raises when it calls back into orbax's closed event loop."""
    frames = traceback.extract_tb(tb) if tb is not None else []
    return (exc_type is RuntimeError and str(exc) == "Event loop is closed"
            and any(f.name == "call_soon_threadsafe" for f in frames))


def _quiet_closed_loop_callbacks() -> None:
    """After a failed restore, orbax's other in-flight reads of the damaged checkpoint may finish after its event
    loop closed; tensorstore then prints their ``Event loop is closed`` traceback from its own thread, in the middle
    of the job's one-line error. This drops exactly those (sys.excepthook and sys.unraisablehook) and nothing else."""
    if getattr(sys.excepthook, "_smoothjax_quiet", False):
        return
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def quiet_excepthook(exc_type, exc, tb):
        if not _is_closed_loop_callback(exc_type, exc, tb):
            excepthook(exc_type, exc, tb)

    def quiet_unraisablehook(args):
        if not _is_closed_loop_callback(args.exc_type, args.exc_value, args.exc_traceback):
            unraisablehook(args)

    quiet_excepthook._smoothjax_quiet = True
    sys.excepthook, sys.unraisablehook = quiet_excepthook, quiet_unraisablehook


def load_model(workdir, step: int | None = None):
    """Returns ``(model, variables)`` for a training run: the Flax module described by ``workdir/model.json`` and
    its variables from checkpoint ``step`` (default: latest). Two lines from a workdir to ``apply_fn``."""
    from smoothjax.models import get_model

    spec = read_model_spec(workdir)
    if spec is None:
        raise ValueError(f"{Path(workdir) / 'model.json'} does not exist; is {workdir} a smoothjax training workdir?")
    model = get_model(spec["model"], spec["num_classes"], dataset=spec["dataset"],
                      normalization=spec["normalization"], **spec["model_kwargs"])
    return model, load_variables(workdir, step)
