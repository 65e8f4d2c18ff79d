"""SIAM's evaluation grid: clean, white-box PGD / EPGD, transfer and NAttack accuracy of smoothed classifiers.

For every (noise_sd, m_test) setting the trained model (same variables) predicts with ``inference.smoothed_scores``
(rule ``mode``) at that input-noise level. ``noise_sd`` is a traced argument (``noisy_apply_fn(model, noise_sd)``)
and the attacks do not depend on m_test, so one compilation per function serves the whole sweep (only ``m_test``,
which fixes shapes, gives one ``correct`` compilation per value), and each batch's attacks are crafted once per
noise_sd (``Programs`` counts its compilations). Attacks, all L-inf with budget ``epsilon`` in pixel units
(default 8/255):

* ``pgd``: white-box PGD (``pgd_steps`` steps of eps/4, random start) on the single-pass objective (one stochastic
  pass per step, the reference's ``run_attack.py``);
* ``epgd``: the EOT objective (gradient averaged over ``eot_passes`` passes per step);
* ``transfer``: PGD crafted on a source model (its own noise settings), evaluated here;
* ``nattack``: black-box NAttack on the smoothed classifier's normalised scores (``nattack``).

Data-parallel as training: global batches of ``batch_size`` (a multiple of the device count) are sharded over every
device of every process, attacks (NAttack included) and predictions alike; each process reads only its rows of every
global batch (``data.eval_batches``), correct counts are summed on the devices and NAttack's per-image outcomes
gathered, so every figure counts every image once. Batch b's randomness is keyed by ``fold_in(key, b * batch_size)``
and drawn for the whole global batch, so the figures are the same on one device, several devices or several
processes (same ``batch_size``). The job around it (outputs, command line) is ``smoothjax.jobs.evaluate``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from smoothjax import data, parallel
from smoothjax.models import make_stochastic_apply_fn
from smoothjax.noise import add_channel_noise
from smoothjax.siam.inference import check_mode, smoothed_scores
from smoothjax.siam.linf_attacks import pgd_linf
from smoothjax.siam.nattack import nattack

ATTACKS = ("clean", "pgd", "epgd", "transfer", "nattack")


def noisy_apply_fn(model, noise_sd) -> Callable:
    """One stochastic pass of ``model`` at input-noise level ``noise_sd``, in the library's stochastic convention:
    ``apply(variables, images, key, input_noise=True) -> logits`` (``models.contract``).

    ``noise_sd`` is a (C,) float32 array in pixel units (``as_noise_sd``; it may be traced, so one compilation
    serves every noise level) or a float. The model's own input noise is switched off and ``images + noise_sd * z``
    (z ~ N(0, I), a fresh draw per image and pass, from ``split(key)[0]``, drawn and added in float32 whatever the
    image dtype: ``noise.add_channel_noise``) is fed to it — the same distribution as the model's built-in input
    noise. Weight noise (PNI/CPNI) comes from ``split(key)[1]``; a deterministic model
    gets input noise only (so it can be smoothed over m passes).
    """
    base = model.clone(noise_sd=0.0) if hasattr(model, "noise_sd") else model
    apply_fn = make_stochastic_apply_fn(base)

    def apply(variables, images, key, input_noise: bool = True):
        noise_key, key = jax.random.split(key)
        if input_noise:
            images = add_channel_noise(noise_key, images, noise_sd)
        return apply_fn(variables, images, key, input_noise=False)

    apply.stochastic = True
    return apply


def as_noise_sd(noise_sd, channels: int) -> np.ndarray:
    """(C,) float32 per-channel input-noise std in pixel units from a float or a per-channel sequence."""
    sd = np.asarray(noise_sd, np.float32)
    if sd.ndim > 1 or (sd.ndim == 1 and sd.shape[0] != channels) or not np.all(np.isfinite(sd)) or np.any(sd < 0):
        raise ValueError(f"noise_sd={noise_sd!r} is not allowed; it must be a float >= 0 or {channels} of them")
    return np.broadcast_to(sd, (channels,)).copy()


def _probabilities(scores, mode):
    """Smoothed scores as probabilities for NAttack: softmax of logits, normalised counts / rank weights."""
    if mode in ("mean_logits", "single"):
        return jax.nn.softmax(scores, -1)
    return scores / jnp.sum(scores, -1, keepdims=True)


class Programs:
    """The jitted functions of one evaluation, built once and reused over the whole (noise_sd, m_test) grid and
    every batch: ``noise_sd`` is a traced argument everywhere; ``m_test`` is static only in ``correct`` and the
    NAttack score (the number of passes fixes shapes); the crafted attacks do not depend on m_test at all.
    ``correct(variables, x, y, mask, key, noise_sd, m)`` is the number of rows with ``mask`` that the smoothed
    classifier gets right: an int32 scalar replicated on every device (readable on every process)."""

    def __init__(self, model, *, mode, epsilon, pgd_steps, eot_passes, source, chunk_size, pass_loop="auto"):
        self.compiles = 0  # traces of the jitted functions (each is one XLA compilation)

        def traced(f):
            def g(*a, **k):
                self.compiles += 1
                return f(*a, **k)
            return g

        def scores(v, x, k, sd, m):
            return smoothed_scores(k, noisy_apply_fn(model, sd), v, x, num_samples=m, mode=mode,
                                   chunk_size=chunk_size)

        def craft(v, x, y, k, sd, passes):
            return pgd_linf(noisy_apply_fn(model, sd), v, x, y, k, epsilon=epsilon, num_steps=pgd_steps,
                            num_passes=passes, pass_loop=pass_loop)

        def correct(v, x, y, mask, k, sd, m):
            return jnp.sum((jnp.argmax(scores(v, x, k, sd, m), -1) == y) & mask, dtype=jnp.int32)

        self.correct = jax.jit(traced(correct), static_argnums=6)
        self.craft = {"pgd": jax.jit(traced(lambda v, x, y, k, sd: craft(v, x, y, k, sd, 1))),
                      "epgd": jax.jit(traced(lambda v, x, y, k, sd: craft(v, x, y, k, sd, eot_passes)))}
        self._nattack_scores = {}
        self._scores, self._mode = scores, mode
        if source is not None:
            src_apply = make_stochastic_apply_fn(source[0])  # the source keeps its own noise settings
            self.craft["transfer"] = jax.jit(traced(lambda v, x, y, k: pgd_linf(
                src_apply, v, x, y, k, epsilon=epsilon, num_steps=pgd_steps)))

    def nattack_score(self, m: int) -> Callable:
        """``score(images, variables, key, noise_sd)`` -> (N, K) smoothed probabilities, one function object per m."""
        if m not in self._nattack_scores:
            self._nattack_scores[m] = lambda x, v, k, sd: _probabilities(self._scores(v, x, k, sd, m), self._mode)
        return self._nattack_scores[m]


def evaluate_grid(model, variables, images, labels, **kwargs) -> list:
    """``evaluate_dataset`` on in-memory ``images`` (N, H, W, C) in [0, 1] and ``labels`` (N,) ints (NumPy, the
    same on every process)."""
    labels = np.asarray(labels, np.int32)
    dataset = data.ArraySource(np.asarray(images, np.float32), labels, int(labels.max(initial=0)) + 1)
    return evaluate_dataset(model, variables, dataset, **kwargs)


def evaluate_dataset(model, variables, dataset, *, noise_sds, m_tests, mode: str, attacks, key, epsilon=8 / 255,
                     pgd_steps: int = 7, eot_passes: int = 8, source=None, batch_size: int = 100,
                     chunk_size: int | None = 1, pass_loop: str = "auto", nattack_kwargs=None, reporter=None,
                     programs: Programs | None = None) -> list:
    """Accuracy (fraction of the images of ``dataset``) of the smoothed ``model`` under each attack, for every
    (noise_sd, m_test).

    ``dataset``: a ``data.Source`` (every item is evaluated once, in index order); ``noise_sds``: floats or
    per-channel tuples (pixel units); ``source`` = (model, variables) for ``transfer``. ``chunk_size`` passes are
    vmapped together (1 = one pass at a time over the batch: fastest with weight noise, whose vmapped convs become
    slow grouped convs on CPU); ``pass_loop`` is EPGD's (``linf_attacks.expectation_loss``). ``reporter`` (optional)
    has ``advance(n, **postfix)``: called with the rows of every setting and the NAttack iteration.
    Data-parallel as training: global batches of ``batch_size`` (a multiple of the device count) are sharded over
    every device of every process, each process reading only its rows (``data.eval_batches``, padding rows
    masked out); correct counts are summed on the devices, so every image counts once. Batch b's randomness is
    ``fold_in(key, b * batch_size)`` and is drawn for the whole global batch (partitionable threefry), so the
    figures do not depend on the number of devices or processes (up to floating-point reassociation). The attacks
    of one batch are crafted once per noise_sd (transfer: once) and evaluated at every m_test. Every process gets
    the rows, one per setting, noise_sd-major: ``{"noise_sd", "m_test", "mode", "count", <attack>: accuracy}``.
    """
    check_mode(mode)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attacks {unknown}; choose from: {', '.join(ATTACKS)}")
    if "transfer" in attacks and source is None:
        raise ValueError("attack 'transfer' needs a source model (evaluate.source_workdir)")
    mesh = parallel.make_mesh()
    parallel.check_batch_size(batch_size, mesh)
    programs = programs or Programs(model, mode=mode, epsilon=epsilon, pgd_steps=pgd_steps, eot_passes=eot_passes,
                                    source=source, chunk_size=chunk_size, pass_loop=pass_loop)
    variables = parallel.replicate(variables, mesh)
    src_vars = parallel.replicate(source[1], mesh) if source is not None else None
    channels = dataset.image_shape[-1]
    sds = [parallel.replicate(as_noise_sd(sd, channels), mesh) for sd in noise_sds]
    correct = np.zeros((len(sds), len(m_tests), len(attacks)), np.int64)
    n = len(dataset)
    batches = data.eval_batches(dataset, batch_size=batch_size, process_index=jax.process_index(),
                                process_count=jax.process_count())
    for b, local in enumerate(batches):
        start = b * batch_size
        rows = min(batch_size, n - start)
        batch = parallel.to_global(local, mesh)
        gx, gy, mask = batch["image"], batch["label"], batch["mask"]
        # One prediction key per batch for every attack (the same smoothed classifier judges clean and attacked
        # images: common random numbers); one crafting key per attack.
        pkey, ckey = jax.random.split(jax.random.fold_in(key, start))
        akeys = [jax.random.fold_in(ckey, i) for i in range(len(attacks))]
        transfer = (programs.craft["transfer"](src_vars, gx, gy, akeys[attacks.index("transfer")])
                    if "transfer" in attacks else None)
        for s, sd in enumerate(sds):
            crafted = {"clean": gx, "transfer": transfer}
            crafted.update({a: programs.craft[a](variables, gx, gy, akeys[i], sd)
                            for i, a in enumerate(attacks) if a in ("pgd", "epgd")})
            for j, m in enumerate(m_tests):
                for i, attack in enumerate(attacks):
                    if attack == "nattack":
                        progress = None if reporter is None else (
                            lambda it: reporter.advance(0, nattack_iteration=it))  # noqa: E731
                        out = nattack(programs.nattack_score(m), gx, gy, akeys[i], epsilon=epsilon,
                                      score_args=(variables, pkey, sd), active=mask, mesh=mesh,
                                      progress=progress, **(nattack_kwargs or {}))
                        correct[s, j, i] += int(np.sum(~out["success"][:rows]))
                        continue
                    correct[s, j, i] += int(programs.correct(variables, crafted[attack], gy, mask, pkey, sd, m))
                if reporter is not None:
                    reporter.advance(rows)
    return [{"noise_sd": _plain(sd), "m_test": m, "mode": mode, "count": n,
             **{a: float(correct[s, j, i]) / max(n, 1) for i, a in enumerate(attacks)}}
            for s, sd in enumerate(noise_sds) for j, m in enumerate(m_tests)]


def _plain(sd):
    return [float(v) for v in sd] if np.ndim(sd) else float(sd)


def evaluate_setting(model, variables, images, labels, *, noise_sd, m_test: int, **kwargs) -> dict:
    """``evaluate_grid`` for one (noise_sd, m_test) setting; returns its row."""
    return evaluate_grid(model, variables, images, labels, noise_sds=[noise_sd], m_tests=[m_test], **kwargs)[0]
