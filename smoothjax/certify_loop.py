"""The job behind ``certify.py``: CERTIFY or PREDICT every selected test image of a trained run, resumably.

Rows go to ``workdir/certify/<mode>_sigma_<sigma>.tsv`` in the format of Cohen et al.'s reference code
(``idx label predict radius correct time``; predict mode drops ``radius``), so their analysis scripts read our
files and ours read theirs. Image ``idx`` gets the key ``fold_in(key(seed), idx)``: its result does not depend on
batching, device count or restarts. A sidecar ``<log>.json`` records the settings the rows were made with; a
restarted job checks them, drops a torn last line, and continues after the last complete row. Every check (settings,
checkpoint, data, compilation) runs before the first byte is written, and a log is written by one process at a time
(an exclusive ``flock``), so a bad command never touches an existing log. Sequential mode (extra ``samples``
column), sound noise and randomized Clopper-Pearson (separately named logs) are in ``smoothjax.certify_modes``.
Predict mode with ``certify.attack`` (``pgd``/``ddn``) attacks each image first (SmoothAdv's ``predict.py``) and
names the log after the attack (``smoothjax.empirical_robustness``, ``smoothjax.analysis.attack_name``).

Multi-process (``config.distributed`` or ``SMOOTHJAX_DISTRIBUTED=1``, ``parallel.initialize_distributed``): every
process evaluates its own contiguous share of each step's images on its local devices; the rows are gathered and
process 0 alone holds the lock and writes the log and sidecar, which are the same as one process's (the keys are
per index). A failed check on any process makes every process raise the same one-line ValueError.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from smoothjax import analysis, certification, certify_modes, checkpointing, data, empirical_robustness, parallel
from smoothjax.atomic_files import write_atomically
from smoothjax.models import make_apply_fn
from smoothjax.reporting import Reporter

HEADERS = certify_modes.HEADERS  # certify, predict, sequential (+ samples column)


def log_path(workdir, mode: str, sigma: float, variants=()) -> Path:
    """``<workdir>/certify/<mode>[_<variant>...]_sigma_<sigma>.tsv``, the log ``certify_workdir`` writes; variants
    (``certify_modes.log_variants``: ``sound``, ``randomized``) keep such runs apart from the plain ones."""
    return Path(workdir) / "certify" / analysis.log_name(mode, sigma, variants)


def _validate(cc, sigma: float) -> None:
    """One-line ValueError naming the first bad ``config.certify`` value."""
    if cc.mode not in HEADERS:
        raise ValueError(f"certify.mode={cc.mode!r} is not allowed; choose one of: certify, predict, sequential")
    if not (sigma > 0 and np.isfinite(sigma)):
        raise ValueError(f"certify.sigma={sigma} is not allowed; sigma must be a finite number > 0 (pixel units)")
    if not 0 < cc.alpha < 1:
        raise ValueError(f"certify.alpha={cc.alpha} is not allowed; alpha must be in (0, 1)")
    for name in ("n0", "n", "batch_size", "skip", "images_per_step"):
        value = cc.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"certify.{name}={value!r} is not allowed; it must be an integer >= 1")
    tag = cc.get("tag", "")
    if not isinstance(tag, str) or (tag and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", tag)):
        raise ValueError(f"certify.tag={tag!r} is not allowed; use '' or letters, digits, '.' and '-' (e.g. n100k)")
    if isinstance(cc.max, bool) or not isinstance(cc.max, int) or not (cc.max == -1 or cc.max >= 1):
        raise ValueError(f"certify.max={cc.max!r} is not allowed; use -1 (all images) or an integer >= 1")
    certify_modes.validate(cc, sigma)  # sequential / sound / randomized_cp settings
    empirical_robustness.validate(cc)  # attack settings (predict mode only)


def _latest_step(workdir) -> int:
    """The newest checkpoint step of ``workdir``, read without creating or cleaning anything."""
    directory = Path(workdir).absolute() / "checkpoints"
    step = None
    if directory.is_dir():
        manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
        step = manager.latest_step()
        manager.close()
    if step is None:
        raise ValueError(f"no checkpoint in {directory}; train first (train.py --workdir={workdir})")
    return int(step)


def _load_model(workdir, step: int):
    try:
        return checkpointing.load_model(workdir, step)
    except Exception as e:  # orbax raises many types (ValueError too) for an empty or half-deleted checkpoint.
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"checkpoint {Path(workdir).absolute() / 'checkpoints' / str(step)} cannot be loaded "
                         f"({type(e).__name__}: {first}); it is empty or damaged, train again or delete it") from None


@contextlib.contextmanager
def _orbax_errors_only():
    """Silences absl warnings (orbax's) for a while: a damaged checkpoint gets one clear error line instead."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def _settings(config, cc, sigma: float, step: int, num_examples: int, data_fingerprint: str) -> dict:
    """Everything that changes the rows: a log is only ever continued with equal settings.

    The data are recorded by what they are (``data.fingerprint`` of the selected images), never by a path, so a
    log committed on one machine is continued on another from any checkout."""
    keys = ("n0", "n", "alpha", "batch_size", "skip", "seed") if cc.mode == "certify" else (
        "n", "alpha", "batch_size", "skip", "seed")
    keys = () if cc.mode == "sequential" else keys  # certify_modes.settings has the sequential ones.
    return {"mode": cc.mode, "sigma": sigma, "dataset": config.dataset, "split": cc.split,
            "num_examples": num_examples, "data_fingerprint": data_fingerprint,
            "checkpoint_step": step, **{k: cc[k] for k in keys}, **certify_modes.settings(cc, sigma),
            **empirical_robustness.settings(cc)}


# Sidecars written before data fingerprints recorded the machine's absolute data path instead.
_LEGACY_DATA_KEY, _DATA_KEY = "data_path", "data_fingerprint"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _check_settings(path: Path, settings: dict) -> bool:
    """Read-only: raises unless the existing log at ``path`` was made with exactly ``settings``.

    Returns True when the sidecar is of the older kind that recorded a data path instead of a data fingerprint
    (everything else equal): its rows are continued and the caller may upgrade the sidecar."""
    old = analysis.read_settings(path)
    if old is None:
        raise ValueError(f"{path} exists but {_sidecar(path).name} (its settings) does not, so it may come from "
                         "another run or code; move it away or choose another workdir")
    legacy = _LEGACY_DATA_KEY in old and _DATA_KEY not in old
    ignored = {_LEGACY_DATA_KEY, _DATA_KEY} if legacy else set()
    diff = [f"{k}={old.get(k)!r} (now {settings.get(k)!r})" for k in sorted(set(old) | set(settings), key=str)
            if k not in ignored and old.get(k) != settings.get(k)]
    if diff:
        raise ValueError(f"{path} was made with other settings ({', '.join(diff)}); move it away or choose another "
                         "workdir")
    return legacy


def _open_log(path: Path, header: str, settings: dict):
    """Opens (creating it if needed) the log for appending under an exclusive lock; returns (file, done indices).

    A torn last line (no newline: the previous run was killed while writing it) is cut off; every complete row
    is kept. Raises before changing anything when the file belongs to other settings, is not a log of this
    format, or is being written by another process.
    """
    if path.exists():
        if _check_settings(path, settings):  # an older sidecar (data path, no fingerprint): record the data now
            write_atomically(_sidecar(path), json.dumps(settings, indent=2) + "\n")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(_sidecar(path), json.dumps(settings, indent=2) + "\n")
        write_atomically(path, header + "\n")
    f = open(path, "r+b")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise ValueError(f"{path} is being written by another certify.py process; wait for it or stop it") from None
    try:
        raw = f.read()
        if not raw.startswith(header.encode() + b"\n"):
            raise ValueError(f"{path} does not start with the header {header!r}; move it away")
        complete = raw[: raw.rfind(b"\n") + 1]
        done = set()
        width = header.count("\t") + 1
        for number, line in enumerate(complete.splitlines()[1:], start=2):
            fields = line.split(b"\t")
            if len(fields) != width or not fields[0].isdigit():
                raise ValueError(f"{path}: line {number} ({line[:60]!r}) is not a row of {width} fields; the log "
                                 "is damaged, move it away")
            done.add(int(fields[0]))
        if len(complete) != len(raw):
            f.truncate(len(complete))
        f.seek(0, os.SEEK_END)
    except BaseException:
        f.close()
        raise
    return f, done


_MESSAGE_BYTES = 480


def _agree(error: str | None) -> None:
    """Every process raises ``ValueError(message)`` of the first process (lowest index) with an error, if any.

    A collective on several processes (each process must call it); one process only raises its own error."""
    if jax.process_count() == 1:
        if error is not None:
            raise ValueError(error)
        return
    from jax.experimental import multihost_utils
    encoded = (error or "").encode()[:_MESSAGE_BYTES]
    buf = np.zeros(_MESSAGE_BYTES + 1, np.int32)
    buf[0], buf[1:1 + len(encoded)] = error is not None, np.frombuffer(encoded, np.uint8)
    for row in np.asarray(multihost_utils.process_allgather(buf)):
        if row[0]:
            raise ValueError(bytes(row[1:].astype(np.uint8)).rstrip(b"\0").decode(errors="ignore"))


@contextlib.contextmanager
def _together():
    """Runs a block on every process and then ``_agree``s: a ValueError / OSError of the block on any process
    becomes the same one-line ValueError on all of them (no process is left waiting in a collective). With one
    process the original exception propagates unchanged."""
    error = None
    try:
        yield
    except (ValueError, OSError) as e:
        if jax.process_count() == 1:
            raise
        error = str(e).splitlines()[0] if str(e) else type(e).__name__
    _agree(error)


def _from_process_0(a: np.ndarray) -> np.ndarray:
    """Process 0's value of the int32 array ``a`` (same shape on every process), on every process."""
    if jax.process_count() == 1:
        return a
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(a, np.int32)))


def _gather_rows(local: np.ndarray) -> np.ndarray:
    """Concatenation over processes, in process order, of each process's (rows, k) int32 array."""
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(np.asarray(local, np.int32), tiled=True))


def certify_workdir(config, workdir: str) -> Path:
    """Runs CERTIFY (or PREDICT) of ``config.certify`` on the newest checkpoint of ``workdir``; returns the log path.

    Settings (``config.certify``): ``sigma`` (None = the training sigma; pixel units), ``n0``, ``n``, ``alpha``,
    ``batch_size`` (noisy copies of one image per forward pass), ``skip`` (every skip-th image of the split),
    ``max`` (at most this many of those, -1 = all), ``split``, ``mode`` (``certify``, ``predict`` or ``sequential``:
    ``radii``, ``max_samples``, ``cs_method``), ``sound``, ``randomized_cp`` (see ``certify_modes``), ``seed``,
    ``images_per_step`` (images evaluated together, rounded up to a multiple of the global device count).
    ``config.distributed`` (``coordinator_address``, ``num_processes``, ``process_id``; or ``SMOOTHJAX_DISTRIBUTED=1``)
    joins a multi-process run first, after the checks that need no JAX (``parallel.initialize_distributed``).
    Each process evaluates a contiguous share of every step's images on its local devices (images sharded over
    them, the model replicated); the rows are gathered and process 0 alone writes the log (other processes never
    write, and every process returns the path).

    Image ``idx`` is evaluated with key ``fold_in(key(seed), idx)`` by ``certification.certify`` / ``predict``,
    so each row is independent of ``images_per_step``, devices, processes and restarts. Rows are appended to
    ``log_path(workdir, mode, sigma, certify_modes.log_variants(cc))`` (and flushed to disk) as each step
    finishes; indices already in the log are skipped. Guarantee of each certify row: see ``certification.certify``
    (sequential rows: ``sequential.certify_sequential``). Raises a one-line ValueError, having
    written nothing, on bad settings, a missing or damaged checkpoint, data that does not fit the model, or a log
    in the way that was made with other settings; on several processes every process raises the same one.
    """
    cc = config.certify
    spec = checkpointing.read_model_spec(workdir)
    if spec is None:
        raise ValueError(f"{workdir} has no model.json: not a smoothjax training workdir (train.py --workdir=...)")
    if cc.sigma is None and spec.get("sigma") is None:
        raise ValueError(f"{workdir}/model.json records no training sigma; pass --config.certify.sigma=<sigma>")
    sigma = float(spec["sigma"] if cc.sigma is None else cc.sigma)
    _validate(cc, sigma)  # No JAX call so far: a bad command fails on every process before any collective.
    dist = config.get("distributed") or {}
    parallel.initialize_distributed(dist.get("coordinator_address", ""), dist.get("num_processes", -1),
                                    dist.get("process_id", -1))
    with _together():
        if jax.device_count() != jax.process_count() * jax.local_device_count():
            raise ValueError(f"process {jax.process_index()} has {jax.local_device_count()} devices of "
                             f"{jax.device_count()}; certify.py needs the same device count on every process")
        with _orbax_errors_only():
            step = _latest_step(workdir)
        src = data.get_source(config.dataset, cc.split, data_dir=config.get("data_dir") or None,
                              path=config.get("data_path") or None)
        if list(src.image_shape) != list(spec["image_shape"]):
            raise ValueError(f"dataset {config.dataset!r} split {cc.split!r} has images of shape "
                             f"{tuple(src.image_shape)}; the model in {workdir} takes {tuple(spec['image_shape'])}")
        if len(src) == 0:
            raise ValueError(f"dataset {config.dataset!r} split {cc.split!r} is empty; nothing to certify")
        out = log_path(workdir, cc.mode, sigma, certify_modes.log_variants(cc)
                       + empirical_robustness.log_variants(cc) + ((cc.tag,) if cc.get("tag") else ()))
        every = list(range(0, len(src), cc.skip))  # ``max`` only limits how far the log goes, not what it is
        settings = _settings(config, cc, sigma, step, len(src), data.fingerprint(src, every))
        indices = every[: cc.max] if cc.max > 0 else every
        if out.exists() and jax.process_index() == 0:
            _check_settings(out, settings)  # Fail fast; checked again under the lock below.

    num_processes, process = jax.process_count(), jax.process_index()
    mesh = parallel.make_mesh(jax.local_devices())
    per_step = -(-cc.get("images_per_step", 1) // jax.device_count()) * jax.device_count()  # global, all processes
    share = per_step // num_processes  # images per process and step: a multiple of its device count
    common = dict(sigma=sigma, alpha=cc.alpha, batch_size=cc.batch_size, num_classes=int(spec["num_classes"]))
    sound = bool(cc.get("sound", False))
    if sound:
        common["sound"] = True  # exact grid noise; inputs are rounded to the grid below (certify_modes)

    with _together():
        with _orbax_errors_only():
            model, variables = _load_model(workdir, step)
        apply_fn = make_apply_fn(model)
        special = certify_modes.evaluator(cc, sigma, apply_fn, int(spec["num_classes"]))
        attack = empirical_robustness.attacker(cc, apply_fn, sigma)  # None unless predict mode with an attack

        def evaluate(v, idx, x, y):
            keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(cc.seed), i))(idx)
            if attack is not None:  # PREDICT on the adversarial image (keys: independent streams per image)
                x = attack(keys, v, x, y)
            if special is not None:  # sequential mode or randomized Clopper-Pearson: (prediction, radius, samples)
                return special(keys, v, x)
            if cc.mode == "certify":
                cert = certification.certify(keys, apply_fn, v, x, n0=cc.n0, n=cc.n, **common)
                return cert.prediction, cert.radius
            return certification.predict(keys, apply_fn, v, x, n=cc.n, **common), jnp.zeros_like(idx, jnp.float32)

        batch, repl = parallel.batch_sharding(mesh), parallel.replicated(mesh)
        variables = jax.device_put(variables, repl)
        shapes = (jax.ShapeDtypeStruct((share,), jnp.int32, sharding=batch),
                  jax.ShapeDtypeStruct((share, *src.image_shape), jnp.float32, sharding=batch),
                  jax.ShapeDtypeStruct((share,), jnp.int32, sharding=batch))
        # Compile before writing anything: static-argument errors (e.g. n too large) must not leave a log behind.
        run = jax.jit(evaluate, in_shardings=(repl, batch, batch, batch), out_shardings=repl).lower(variables,
                                                                                                 *shapes).compile()

    log, done, reporter = None, set(), None
    with _together():
        if process == 0:  # the only writer: it holds the lock, the others learn what is done from it
            log, done = _open_log(out, HEADERS[cc.mode], settings)
    try:
        done_mask = _from_process_0(np.array([i in done for i in indices], np.int32))
        todo = [i for i, d in zip(indices, done_mask) if not d]
        samples = cc.n + (cc.n0 if cc.mode == "certify" else 0)
        reporter = Reporter(None, total=len(indices), initial=len(indices) - len(todo), unit="image",
                            description=cc.mode)
        n = cc.max_samples if cc.mode == "sequential" else cc.n
        where = f"{jax.device_count()} devices" + (f" of {num_processes} processes" if num_processes > 1 else "")
        reporter.write(f"{cc.mode}: {len(todo)} of {len(indices)} {config.dataset} {cc.split} images to go "
                       f"(checkpoint {step}, sigma={sigma}, n={n}, alpha={cc.alpha}, {per_step} images per step on "
                       f"{where}) -> {out}")
        for line in certify_modes.describe(cc, sigma):
            reporter.write(line)
        rounded_note = sound
        for start in range(0, len(todo), per_step):
            chunk = todo[start:start + per_step]
            padded = np.asarray(chunk + [chunk[-1]] * (per_step - len(chunk)), np.int32)
            mine = padded[process * share:(process + 1) * share]
            images, labels = src.get_batch(mine)
            images, moved = certify_modes.prepare_images(images, sound)
            if rounded_note and moved > 0:
                reporter.write(f"sound: {config.dataset} images are off the 1/255 grid; they are rounded to it "
                               f"(pixels move by up to {moved:.5f}) and each certificate is for the rounded image")
                rounded_note = False
            t0 = time.perf_counter()
            out_arrays = jax.device_get(run(variables, jax.device_put(mine, batch), jax.device_put(images, batch),
                                            jax.device_put(np.asarray(labels, np.int32), batch)))
            used = out_arrays[2] if len(out_arrays) > 2 else np.full(share, samples)
            rows = _gather_rows(np.stack([np.asarray(out_arrays[0], np.int32),
                                          np.asarray(out_arrays[1], np.float32).view(np.int32),
                                          np.asarray(used, np.int32), np.asarray(labels, np.int32)], axis=1))
            seconds = time.perf_counter() - t0
            predictions, radii, used, labels = rows[:, 0], rows[:, 1].view(np.float32), rows[:, 2], rows[:, 3]
            if log is not None:
                log.write("".join(certify_modes.format_row(cc.mode, idx, int(labels[j]), int(predictions[j]),
                                                           float(radii[j]), used[j], seconds / len(chunk))
                                  for j, idx in enumerate(chunk)).encode())
                log.flush()
                os.fsync(log.fileno())
            reporter.advance(len(chunk), samples_per_s=float(np.sum(used[:len(chunk)])) / max(seconds, 1e-9))
    finally:
        if reporter is not None:
            reporter.close()
        if log is not None:
            log.close()
    return out
