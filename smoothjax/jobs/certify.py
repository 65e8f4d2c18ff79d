"""The job behind ``certify.py``: certify (or predict) every selected test image of a trained run, resumably.

One pass, top to bottom: the mode that ``config.certify`` names (``certify_modes.get``) validates the settings; the
checkpoint, data and log in the way are checked on every process; the mode's evaluator is compiled over the global
mesh; then each step's images are evaluated and their rows appended to the log. Rows go to
``workdir/certify/<mode log name>`` in the format of Cohen et al.'s reference code (``analysis.logs``), each with its
settings sidecar (``certify_log``). Image ``idx`` gets the key ``fold_in(key(seed), idx)``: its row does not depend on
batching, device count, process count or restarts, and a restarted job continues after the last complete row.

Multi-process (``config.distributed`` or ``SMOOTHJAX_DISTRIBUTED=1``): the same idiom as training
(``smoothjax.parallel``): each process reads its contiguous rows of every step's images, the evaluator runs over the
global mesh with the results replicated, and process 0 alone holds the lock and writes the log, whose rows are those
of a single process. A failed check on any process makes every process raise the same one-line ValueError.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from smoothjax import analysis, checkpointing, data, parallel
from smoothjax.jobs import certify_modes
from smoothjax.jobs.certify_log import LogFile, check
from smoothjax.jobs.reporting import Reporter
from smoothjax.models import make_apply_fn, with_compute_dtype

# config.certify.key_impl -> JAX's PRNG implementation of the noise. rbg and unsafe_rbg draw their bits with XLA's
# RngBitGenerator (fast on GPU/TPU); unsafe_rbg also derives keys (split, fold_in) without threefry's statistical
# guarantees. Neither is exact under vmap over keys (JAX's docs on jax.random; checked on CPU): an image's draws then
# depend on the other images of its step, so rows depend on images_per_step and on where a resumed run starts. Each row
# is still a valid certificate; only threefry makes a row a function of its image index alone.
KEY_IMPLS = {"threefry": "threefry2x32", "rbg": "rbg", "unsafe_rbg": "unsafe_rbg"}


def certify_workdir(config, workdir: str) -> Path:
    """Runs the mode of ``config.certify`` on the newest checkpoint of ``workdir``; returns the log path.

    Settings (``config.certify``, defaults in ``smoothjax/jobs/defaults.py``): ``sigma`` (None = the training sigma in
    ``model.json``; pixel units), ``n0``, ``n``, ``alpha``, ``batch_size`` (noisy copies of one image per forward
    pass), ``skip`` (every skip-th image of the split), ``max`` (at most this many of those, -1 = all), ``split``,
    ``mode`` and the options of the modes (``certify_modes``), ``seed``, ``key_impl`` (``KEY_IMPLS``; recorded in
    the log's settings unless threefry), ``images_per_step`` (rounded up to a multiple of the global device count),
    ``tag``. Guarantee of each row: that of the mode's certificate
    (``certification.certify``, ``certify_sequential``, ...). Raises a one-line ValueError, having written nothing,
    on bad settings, a missing or damaged checkpoint, data that does not fit the model, or a log in the way that was
    made with other settings; on several processes every process raises the same one. Every process returns the
    path; only process 0 writes.
    """
    cc = config.certify
    spec = checkpointing.read_model_spec(workdir)
    if spec is None:
        raise ValueError(f"{workdir} has no model.json: not a smoothjax training workdir (train.py --workdir=...)")
    if cc.sigma is None and spec.get("sigma") is None:
        raise ValueError(f"{workdir}/model.json records no training sigma; pass --config.certify.sigma=<sigma>")
    sigma = float(spec["sigma"] if cc.sigma is None else cc.sigma)
    mode = certify_modes.get(cc)
    mode.validate(cc, sigma)  # No JAX call so far: a bad command fails on every process before any collective.
    key_impl = cc.get("key_impl", "threefry")
    if key_impl not in KEY_IMPLS:
        raise ValueError(f"certify.key_impl={key_impl!r} is not allowed; choose one of: {', '.join(KEY_IMPLS)}")
    parallel.initialize_distributed(**config.distributed)

    with parallel.together():
        if jax.device_count() != jax.process_count() * jax.local_device_count():
            raise ValueError(f"process {jax.process_index()} has {jax.local_device_count()} devices of "
                             f"{jax.device_count()}; certify.py needs the same device count on every process")
        step = checkpointing.latest_step(workdir)
        src = data.get_source(config.dataset, cc.split, data_dir=config.data_dir or None,
                              path=config.data_path or None)
        if list(src.image_shape) != list(spec["image_shape"]):
            raise ValueError(f"dataset {config.dataset!r} split {cc.split!r} has images of shape "
                             f"{tuple(src.image_shape)}; the model in {workdir} takes {tuple(spec['image_shape'])}")
        if len(src) == 0:
            raise ValueError(f"dataset {config.dataset!r} split {cc.split!r} is empty; nothing to certify")
        out = Path(workdir) / "certify" / mode.log_name(cc, sigma)
        every = list(range(0, len(src), cc.skip))  # ``max`` only limits how far the log goes, not what it is
        checksum = checkpointing.checkpoint_checksum(workdir, step)  # a damaged checkpoint stops us here
        settings = {"mode": cc.mode, "sigma": sigma, "dataset": config.dataset, "split": cc.split,
                    "num_examples": len(src), "data_fingerprint": data.fingerprint(src, every),
                    "checkpoint_step": step, "checkpoint_checksum": checksum, **mode.settings(cc, sigma)}
        if config.get("dtype", "float32") != "float32":  # recorded only when set: older logs continue
            settings["dtype"] = config.get("dtype")
        if key_impl != "threefry":  # the same: threefry logs keep the settings they were written with
            settings["key_impl"] = key_impl
        indices = every[: cc.max] if cc.max > 0 else every
        if out.exists() and out.stat().st_size and jax.process_index() == 0:
            check(out, settings)  # Fail fast; checked again under the lock.

    mesh, process = parallel.make_mesh(), jax.process_index()
    per_step = -(-cc.images_per_step // jax.device_count()) * jax.device_count()  # global, all processes
    share = per_step // jax.process_count()  # this process's rows of each step: a multiple of its device count
    with parallel.together():
        model, variables = checkpointing.load_model(workdir, step)
        model = with_compute_dtype(model, config.get("dtype")) if config.get("dtype", "float32") != "float32" else model
        evaluate = mode.evaluator(cc, sigma, make_apply_fn(model), int(spec["num_classes"]))
        # Compile before writing anything: static-argument errors (e.g. n too large) must not leave a log behind.
        run = _compile(evaluate, cc.seed, mesh, variables, per_step, tuple(src.image_shape), key_impl)
        variables = parallel.replicate(variables, mesh)

    log, reporter = None, None
    with parallel.together():
        if process == 0:  # the only writer: it holds the lock, the others learn from it what is done
            log = LogFile(out, analysis.header(mode.kind), settings)
    try:
        done = parallel.from_process_0(np.array([log is not None and i in log.done for i in indices], np.int32))
        todo = [i for i, d in zip(indices, done) if not d]
        reporter = Reporter(None, total=len(indices), initial=len(indices) - len(todo), unit="image",
                            description=cc.mode)
        where = f"{jax.device_count()} devices" + (f" of {jax.process_count()} processes"
                                                   if jax.process_count() > 1 else "")
        reporter.write(f"{cc.mode}: {len(todo)} of {len(indices)} {config.dataset} {cc.split} images to go "
                       f"(checkpoint {step}, sigma={sigma}, n={mode.draws(cc)}, alpha={cc.alpha}, {per_step} images "
                       f"per step on {where}) -> {out}")
        for line in mode.describe(cc, sigma):
            reporter.write(line)
        noted = False
        for start in range(0, len(todo), per_step):
            chunk = todo[start:start + per_step]
            padded = np.asarray(chunk + [chunk[-1]] * (per_step - len(chunk)), np.int32)
            mine = padded[process * share:(process + 1) * share]
            images, labels = src.get_batch(mine)
            images, note = mode.prepare(cc, images)
            if note and not noted:
                reporter.write(note)
                noted = True
            t0 = time.perf_counter()
            batch = parallel.to_global({"idx": mine, "image": images, "label": np.asarray(labels, np.int32)}, mesh)
            prediction, radius, samples = (parallel.fetch(a) for a in run(variables, batch))
            seconds = time.perf_counter() - t0
            labels = parallel.fetch(batch["label"])
            if log is not None:
                log.append("".join(analysis.format_row(mode.kind, idx, int(labels[j]), int(prediction[j]),
                                                       float(radius[j]), samples[j], seconds / len(chunk))
                                   for j, idx in enumerate(chunk)))
            reporter.advance(len(chunk), samples_per_s=float(np.sum(samples[:len(chunk)])) / max(seconds, 1e-9))
    finally:
        if reporter is not None:
            reporter.close()
        if log is not None:
            log.close()
    return out


def image_keys(seed: int, idx: jax.Array, key_impl: str = "threefry") -> jax.Array:
    """(N,) typed keys of the images ``idx`` (N,) int32: ``fold_in(key(seed, impl), idx)``. With threefry (JAX's
    ``threefry2x32``, the keys of every log written before the option existed) a row depends only on its image's
    index, never on batching, devices or restarts; rbg and unsafe_rbg draw differently under vmap (``KEY_IMPLS``)."""
    root = jax.random.key(seed, impl=KEY_IMPLS[key_impl])
    return jax.vmap(lambda i: jax.random.fold_in(root, i))(idx)


def _compile(evaluate, seed: int, mesh, variables, per_step: int, image_shape: tuple, key_impl: str = "threefry"):
    """``run(variables, batch) -> (prediction, radius, samples)``, compiled for global batches of ``per_step``
    images sharded over ``mesh`` (variables and results replicated); image ``idx`` gets ``image_keys``."""

    def run(v, batch):
        return evaluate(image_keys(seed, batch["idx"], key_impl), v, batch["image"], batch["label"])

    rows, repl = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    shapes = {"idx": jax.ShapeDtypeStruct((per_step,), jnp.int32, sharding=rows),
              "image": jax.ShapeDtypeStruct((per_step, *image_shape), jnp.float32, sharding=rows),
              "label": jax.ShapeDtypeStruct((per_step,), jnp.int32, sharding=rows)}
    variables = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype, sharding=repl),
                             variables)
    return jax.jit(run, in_shardings=(repl, rows), out_shardings=repl).lower(variables, shapes).compile()
