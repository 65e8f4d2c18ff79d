"""The training job behind ``train.py``: config in, trained and checkpointed model out.

``train_and_evaluate(config, workdir)`` validates the whole config before it writes anything, builds the data
pipeline, model and a jitted data-parallel train step over all devices of all processes, resumes from the
newest checkpoint in ``workdir`` if there is one, trains, evaluates clean and noisy accuracy, and returns the
final metrics. The loss is chosen by ``config.loss`` from ``LOSSES``, the one registry of training losses: a new
loss (as Consistency or MACER) is a ``loss_from_config(model, config)`` in its own module plus one line there, not a
copy of this loop; each step's batch also carries ``epoch`` (an int32 scalar, for schedules such as SmoothAdv's
epsilon warm-up). Options: ``init_from`` (a trained run's workdir: fine-tune from its newest checkpoint, new
classifier head when the class count differs; ``smoothadv.finetuning``) and ``self_training_teacher`` (alternate
labelled batches with pseudo-labelled batches of another source; ``smoothadv.self_training``). Optimiser options
``nesterov``, ``grad_clip_norm`` (global-norm clipping, 0 = off), ``lr_schedule='multistep'`` with ``lr_milestones``
(epochs); ``keep_best_by`` (an evaluation metric, e.g. ``clean_accuracy``) keeps the best state in ``workdir/best``
(``checkpointing.Checkpointer`` with orbax's ``best_fn``). Stochastic (SIAM) models are evaluated as smoothed
classifiers (``siam.eval_apply_fn``). Config fields are read as they are: their defaults are in
``smoothjax/jobs/defaults.py``.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable

import jax
import ml_collections
import numpy as np

from smoothjax import certified_training, checkpointing, data, parallel, siam, smoothadv, training
from smoothjax.jobs import train_settings
from smoothjax.jobs.reporting import Reporter
from smoothjax.models import get_model
from smoothjax.noise import check_sigma
from smoothjax.smoothadv import finetuning, self_training

# The registry of training losses, config.loss -> factory(model, config) returning
# loss_fn(params, model_state, batch, key) -> (loss, (new_model_state, metrics)) (the contract of smoothjax.training).
LOSSES: dict[str, Callable] = {
    "gaussian": lambda model, config: training.gaussian_augmentation_loss(model, config.sigma),
    "smoothadv": smoothadv.loss_from_config,
    "siam": siam.loss_from_config,
    "consistency": certified_training.consistency.loss_from_config,
    "macer": certified_training.macer.loss_from_config,
}


def _setup(config):
    """Builds sources, model and schedule from ``config``; raises one-line ValueErrors and writes nothing."""
    check_sigma(config.sigma)
    if config.loss not in LOSSES:
        raise ValueError(f"unknown loss {config.loss!r}; choose one of: {', '.join(sorted(LOSSES))}")
    data_kw = dict(data_dir=config.data_dir or None, path=config.data_path or None)
    train_src = data.get_source(config.dataset, config.train_split, **data_kw)
    eval_src = data.get_source(config.dataset, config.eval_split, **data_kw) if config.eval_split else None
    num_classes = config.num_classes or train_src.num_classes
    stats = config.dataset_stats or config.dataset
    model_kwargs = dict(config.model_kwargs)
    # The compute dtype is not part of the model spec: certification chooses its own (config.dtype).
    dtype = {} if config.get("dtype", "float32") == "float32" else {"dtype": config.get("dtype")}
    model = get_model(config.model, num_classes, dataset=stats, normalization=config.normalization, **model_kwargs,
                      **dtype)
    spec = {"model": config.model, "num_classes": int(num_classes), "dataset": stats,
            "normalization": config.normalization, "model_kwargs": model_kwargs,
            "image_shape": list(train_src.image_shape), "sigma": float(config.sigma),
            "train_dataset": config.dataset}
    return train_src, eval_src, model, spec


def _self_training_setup(config, train_src, spec, loader):
    """The unlabelled loader, teacher ``(apply_fn, variables)`` and loss weight, or None without self-training."""
    teacher = config.self_training_teacher
    if not teacher:
        return None
    weight = config.self_training_weight
    if not (isinstance(weight, (int, float)) and weight >= 0):
        raise ValueError(f"self_training_weight={weight!r} is not allowed; it must be a number >= 0")
    src = data.get_source(config.self_training_dataset, config.self_training_split or "train",
                          data_dir=config.data_dir or None, path=config.self_training_data_path or None)
    if list(src.image_shape) != list(train_src.image_shape):
        raise ValueError(f"self_training_dataset {config.self_training_dataset!r} has images of shape "
                         f"{tuple(src.image_shape)}, the labelled data {tuple(train_src.image_shape)}")
    unlabelled = data.Loader(src, global_batch_size=config.batch_size, seed=config.seed + 1, augment=loader.augment,
                             process_index=jax.process_index(), process_count=jax.process_count())
    apply_fn, variables = self_training.load_teacher(teacher, image_shape=spec["image_shape"],
                                                     num_classes=spec["num_classes"])
    mesh = parallel.make_mesh()
    label = jax.jit(self_training.pseudo_label_fn(apply_fn), out_shardings=parallel.batch_sharding(mesh))
    return unlabelled, label, jax.device_put(variables, parallel.replicated(mesh)), float(weight)


def _num_steps(config, steps_per_epoch: int) -> int:
    steps = config.total_steps
    if steps <= 0:
        steps = math.ceil(config.num_epochs * steps_per_epoch)
    if steps <= 0:
        raise ValueError(f"num_epochs={config.num_epochs}, total_steps={config.total_steps} give no steps; "
                         "set num_epochs > 0 or total_steps > 0")
    return int(steps)


def evaluate(apply_fn, variables, source, *, batch_size: int, sigma: float, key, mesh) -> dict:
    """Clean and noisy (one draw of N(0, sigma^2 I) per image) top-1 accuracy of the base classifier on a split."""
    eval_step = jax.jit(training.make_eval_step(apply_fn, sigma))
    totals = {"count": 0, "clean_correct": 0, "noisy_correct": 0}
    batches = data.eval_batches(source, batch_size=batch_size, process_index=jax.process_index(),
                                process_count=jax.process_count())
    for i, batch in enumerate(batches):
        counts = eval_step(variables, parallel.to_global(batch, mesh), jax.random.fold_in(key, i))
        for k, v in jax.device_get(counts).items():
            totals[k] += int(v)
    n = max(totals["count"], 1)
    return {"clean_accuracy": totals["clean_correct"] / n, "noisy_accuracy": totals["noisy_correct"] / n}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains ``config``'s model in ``workdir`` (resuming from its newest checkpoint) and returns final metrics.

    The run is a pure function of the config: batch ``s`` and the noise of step ``s`` depend only on
    (seed, s), so a run killed at any moment and restarted ends with exactly the parameters of an uninterrupted
    run, and the same global batch on any number of devices or processes gives the same parameters up to
    floating-point reassociation.
    """
    where = Path(workdir)
    if where.exists() and not where.is_dir():
        raise ValueError(f"workdir {workdir} is a file; --workdir must be a directory (new or a run's)")
    if where.is_dir() and not os.access(where, os.W_OK | os.X_OK):
        raise ValueError(f"workdir {workdir} is not writable; choose another --workdir or fix its permissions")
    parallel.initialize_distributed(**config.distributed)
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    parallel.check_batch_size(config.eval_batch_size, mesh)
    train_src, eval_src, model, spec = _setup(config)
    loader = data.Loader(train_src, global_batch_size=config.batch_size, seed=config.seed,
                         augment=data.get_augment(config.augment, train_src.image_shape),
                         process_index=jax.process_index(), process_count=jax.process_count())
    checkpointing.check_model_spec(workdir, spec)
    selftrain = _self_training_setup(config, train_src, spec, loader)
    steps_per_epoch = loader.steps_per_epoch * (2 if selftrain else 1)  # Self-training: + one pseudo batch each.
    total_steps = _num_steps(config, steps_per_epoch)
    tx = _optimizer(config, steps_per_epoch, total_steps)
    init_key, train_key, eval_key = jax.random.split(jax.random.key(config.seed), 3)
    repl = parallel.replicated(mesh)
    init = jax.jit(lambda k: training.create_train_state(model, tx, k, train_src.image_shape), out_shardings=repl)
    pretrained, old_classes = None, None
    if config.init_from:  # Checked against the model's structure before anything is written.
        pretrained, old_classes = finetuning.read_pretrained(config.init_from, spec)
        finetuning.transfer_variables(pretrained, jax.eval_shape(init, init_key).variables, old_classes=old_classes,
                                      new_classes=spec["num_classes"])
    train_step = _train_step(LOSSES[config.loss](model, config), tx, mesh, steps_per_epoch, bool(selftrain))
    evaluator = _Evaluator(config, workdir, siam.eval_apply_fn(model, config), eval_src, eval_key, mesh)

    record = train_settings.settings(config, train_src, total_steps)
    resuming = checkpointing.has_checkpoints(workdir)
    note = train_settings.check(workdir, record, checkpointing.read_model_spec(workdir), resuming)

    # Everything above validated the config and the workdir; now write.
    if jax.process_index() == 0 and not (Path(workdir) / train_settings.FILE).exists():
        checkpointing.write_model_spec(workdir, spec)
        train_settings.write(workdir, record)
    start = checkpointing.resume_step(workdir) or 0
    ckpt = checkpointing.Checkpointer(workdir, max_to_keep=config.keep_checkpoints)
    state, fresh = _initial_state(ckpt, start, init, init_key, tx, repl, pretrained, old_classes,
                                  spec["num_classes"])
    reporter = Reporter(workdir, total=max(total_steps, start), initial=start, unit="step", description="train",
                        resume_step=start)
    if note:
        reporter.write(note)
    reporter.write(f"{config.model} on {config.dataset}: {total_steps} steps of batch {config.batch_size} "
                   f"({steps_per_epoch}/epoch) on {mesh.devices.size} device(s), {jax.process_count()} "
                   f"process(es); sigma={config.sigma}" + (f"; resuming at step {start}" if start else "")
                   + (f"; fine-tuned from {config.init_from} (new: {', '.join(fresh) or 'nothing'})"
                      if pretrained is not None and not start else ""))
    if start >= total_steps:  # a finished run (or an earlier version's run past a lowered total_steps)
        reporter.write(f"checkpoint {start} already reached total_steps={total_steps}: nothing to train"
                       + (f" (it is {start - total_steps} steps past it)" if start > total_steps else "")
                       + f"; evaluating the parameters of step {start}")
    pending, t0 = [], time.time()
    batches = _global_batches(loader, selftrain, start, mesh)
    for step in range(start, total_steps):
        batch, weight = next(batches)
        state, metrics = train_step(state, batch, train_key, weight)
        pending.append(metrics)
        done = step + 1
        if done % config.log_every_steps == 0 or done == total_steps:
            means = {k: float(np.mean([m[k] for m in jax.device_get(pending)])) for k in pending[0]}
            means["images_per_second"] = len(pending) * config.batch_size / (time.time() - t0)
            reporter.scalars(done, means)
            pending, t0 = [], time.time()
            reporter.advance(0, **means)
        reporter.advance(1)
        if done % config.checkpoint_every_steps == 0 or done == total_steps:
            ckpt.save(done, _as_dict(state))
        if config.eval_every_steps and done % config.eval_every_steps == 0 and done != total_steps:
            evaluator(done, state, reporter)
    ckpt.close()
    final = max(total_steps, start)  # the step whose parameters ``state`` holds
    results = evaluator(final, state, reporter, final=True)
    reporter.close()
    return {"step": final, **results}


def _optimizer(config, steps_per_epoch: int, total_steps: int):
    return training.make_optimizer(
        learning_rate=config.learning_rate, steps_per_epoch=steps_per_epoch, momentum=config.momentum,
        weight_decay=config.weight_decay, lr_schedule=config.lr_schedule, lr_step_epochs=config.lr_step_epochs,
        lr_decay=config.lr_decay, total_steps=total_steps, nesterov=config.nesterov,
        grad_clip_norm=config.grad_clip_norm, lr_milestones=tuple(config.lr_milestones))


def _train_step(loss_fn, tx, mesh, steps_per_epoch: int, selftrain: bool):
    """``step(state, batch, key, loss_weight) -> (state, metrics)``, jitted over the mesh (state replicated, batch
    sharded, state donated); the batch gains ``epoch`` (and ``loss_weight`` with self-training)."""
    base_step = training.make_train_step(self_training.weighted(loss_fn) if selftrain else loss_fn, tx)

    def step_with_epoch(state, batch, key, loss_weight):
        extra = {"epoch": state.step // steps_per_epoch, **({"loss_weight": loss_weight} if selftrain else {})}
        return base_step(state, {**batch, **extra}, key)

    repl = parallel.replicated(mesh)
    return jax.jit(step_with_epoch, in_shardings=(repl, parallel.batch_sharding(mesh), repl, repl),
                   out_shardings=(repl, repl), donate_argnums=0)


def _global_batches(loader, selftrain, start: int, mesh):
    """Yields ``(global batch, loss weight)`` from step ``start`` on; with self-training, every other batch comes
    from the unlabelled source with the teacher's argmax as labels and weight ``self_training_weight``."""
    if not selftrain:
        for local in loader.iterate(start_step=start):
            yield parallel.to_global(local, mesh), np.float32(1.0)
        return
    unlabelled, label, teacher_variables, weight = selftrain
    for local, pseudo in self_training.alternating_batches(loader, unlabelled, start):
        batch = parallel.to_global(local, mesh)
        if pseudo:
            batch = {**batch, "label": label(teacher_variables, batch["image"])}
        yield batch, np.float32(weight if pseudo else 1.0)


class _Evaluator:
    """Evaluates a state on the eval split (if any), reports ``eval_*`` scalars and keeps the best state
    (``keep_best_by``); returns the metrics (``{}`` without an eval split)."""

    def __init__(self, config, workdir, apply_fn, source, key, mesh):
        self.config, self.apply_fn, self.source, self.key, self.mesh = config, apply_fn, source, key, mesh
        by = config.keep_best_by  # orbax keeps the best state by this metric in workdir/best/checkpoints
        self.best = checkpointing.Checkpointer(Path(workdir) / "best", max_to_keep=1, best_metric=by) if by else None

    def __call__(self, step: int, state, reporter, final: bool = False) -> dict:
        if self.source is None:
            if final and self.best is not None:
                self.best.close()
            return {}
        results = evaluate(self.apply_fn, state.variables, self.source, batch_size=self.config.eval_batch_size,
                           sigma=self.config.sigma, key=self.key, mesh=self.mesh)
        reporter.scalars(step, {f"eval_{k}": v for k, v in results.items()})
        if self.best is not None:
            self.best.save(step, _as_dict(state), metrics=results)
            if final:
                self.best.close()
        return results


def _initial_state(ckpt, start, init, init_key, tx, repl, pretrained, old_classes, num_classes):
    """The state to train from, replicated on the mesh, and the names of freshly initialised variables.

    Checkpoint ``start`` when there is one (a resumed run); otherwise a new state from ``init_key``, with the
    variables of a pretrained run copied in (``init_from``; a head of another class count stays new).
    """
    if start:
        target = _as_dict(jax.eval_shape(init, init_key))
        return training.TrainState(**ckpt.restore(target, shardings=jax.tree.map(lambda _: repl, target))), []
    state = init(init_key)
    if pretrained is None:
        return state, []
    local = jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), state.variables)
    variables, fresh = finetuning.transfer_variables(pretrained, local, old_classes=old_classes,
                                                     new_classes=num_classes)
    variables = jax.tree.map(lambda v: jax.make_array_from_callback(v.shape, repl, lambda i: v[i]), variables)
    params = variables.pop("params")
    state = state.replace(params=params, model_state=variables, opt_state=jax.jit(tx.init, out_shardings=repl)(params))
    return state, fresh


def _as_dict(state) -> dict:
    return {"step": state.step, "params": state.params, "model_state": state.model_state,
            "opt_state": state.opt_state}
