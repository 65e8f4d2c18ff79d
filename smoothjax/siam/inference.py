"""Smoothed inference of SIAM (Nemcovsky et al.): combine m stochastic forward passes into one prediction.

Rules (``mode``), on the (m, B, K) logits of m passes:

* ``vote``: each pass votes for its argmax class; score = number of votes.
* ``mean_logits``: score = the average logit vector.
* ``rank_weighted``: each pass adds ``2**-r`` to the class it ranks r-th by logit (r = 0 for its largest logit).
* ``single``: one pass with the input noise switched off (weight noise stays on): the stochastic model an EOT
  attacker differentiates; score = its logits.

Top-k for every rule: the k classes with the highest scores. All ties (equal logits inside a pass, equal
scores across classes) are broken towards the lower class index, so results are deterministic.

``apply_fn`` follows the library's one convention (``models.contract``, docs/api.md): a stochastic model is
``apply_fn(variables, images, key) -> logits`` (``models.make_stochastic_apply_fn``; ``single`` also passes
``input_noise=False``), a deterministic one ``apply_fn(variables, images) -> logits``. Smoothing a deterministic
function over m > 1 passes raises a one-line ValueError (the passes would be equal); give it input noise with
``siam.noisy_apply_fn`` or use m = 1.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from smoothjax.models.contract import check_passes, with_key

MODES = ("vote", "mean_logits", "rank_weighted", "single")


def check_mode(mode: str) -> str:
    """Returns ``mode`` or raises a one-line ValueError naming the allowed rules."""
    if mode not in MODES:
        raise ValueError(f"unknown smoothing mode {mode!r}; choose one of: {', '.join(MODES)}")
    return mode


def _descending_order(v: jax.Array) -> jax.Array:
    """Indices sorting the last axis by decreasing value, ties by increasing index (stable)."""
    return jnp.argsort(-v, axis=-1, stable=True)


def class_scores(logits: jax.Array, mode: str) -> jax.Array:
    """(B, K) float32 class scores of rule ``mode`` from (m, B, K) per-pass logits (see module docstring).

    ``single`` uses the first pass only. Scores of ``vote`` are vote counts (integers stored as float32);
    ``rank_weighted`` scores sum to ``m * (2 - 2**(1-K))`` per image.
    """
    check_mode(mode)
    if logits.ndim != 3:
        raise ValueError(f"logits have shape {logits.shape}; expected (m, B, K) per-pass logits")
    logits = logits.astype(jnp.float32)
    num_classes = logits.shape[-1]
    if mode == "vote":
        winners = _descending_order(logits)[..., 0]
        return jnp.sum(jax.nn.one_hot(winners, num_classes, dtype=jnp.float32), axis=0)
    if mode == "mean_logits":
        return jnp.mean(logits, axis=0)
    if mode == "rank_weighted":
        ranks = jnp.argsort(_descending_order(logits), axis=-1)  # rank of every class in its pass
        return jnp.sum(jnp.exp2(-ranks.astype(jnp.float32)), axis=0)
    return logits[0]


def top_k_classes(scores: jax.Array, k: int = 1) -> jax.Array:
    """(B, k) int32 classes of the k highest (B, K) ``scores``, best first; ties towards the lower index."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= scores.shape[-1]:
        raise ValueError(f"top_k={k!r} is not allowed; it must be an int in [1, {scores.shape[-1]}]")
    return _descending_order(scores)[..., :k].astype(jnp.int32)


def stochastic_logits(key: jax.Array, apply_fn: Callable, variables, x: jax.Array, *, num_samples: int,
                      chunk_size: int | None = None, input_noise: bool = True) -> jax.Array:
    """(num_samples, B, K) logits of ``num_samples`` stochastic passes of ``apply_fn`` on ``x``.

    ``apply_fn(variables, images, key)`` is one pass (``models.make_stochastic_apply_fn``; called with
    ``input_noise=False`` only when ``input_noise`` is False); pass j uses ``jax.random.split(key,
    num_samples)[j]``. A deterministic ``apply_fn(variables, images)`` is allowed for ``num_samples=1`` only
    (ValueError otherwise: m equal passes). The passes run ``jax.vmap``-ed, ``chunk_size`` at a time
    (None = all at once), so memory is bounded by ``chunk_size`` passes whatever ``num_samples`` is.
    Speed on CPU: with weight noise (PNI/CPNI) every pass has its own weights, and vmapped passes turn each conv
    into a grouped conv that XLA:CPU runs about 5x slower than one pass at a time over the batch — use
    ``chunk_size=1`` for such models (``evaluation`` and ``benchmarks/siam.py`` do); with input
    noise only, vmapped passes are one large batch and None is fastest.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples={num_samples!r} is not allowed; it must be an int >= 1")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size={chunk_size!r} is not allowed; it must be None or an int >= 1")
    check_passes(apply_fn, num_samples)
    keys = jax.random.split(key, num_samples)
    apply_fn = with_key(apply_fn)
    if input_noise:
        one = lambda k: apply_fn(variables, x, k)  # noqa: E731
    else:
        one = lambda k: apply_fn(variables, x, k, input_noise=False)  # noqa: E731
    if chunk_size is None or chunk_size >= num_samples:
        return jax.vmap(one)(keys)
    return jax.lax.map(one, keys, batch_size=chunk_size)


def smoothed_scores(key: jax.Array, apply_fn: Callable, variables, x: jax.Array, *, num_samples: int, mode: str,
                    chunk_size: int | None = None) -> jax.Array:
    """(B, K) scores of the smoothed classifier (rule ``mode``) on images ``x`` (B, H, W, C) in [0, 1].

    ``single`` runs one pass with ``input_noise=False`` whatever ``num_samples`` is. Pure and jittable
    (``num_samples``, ``mode``, ``chunk_size`` static).
    """
    check_mode(mode)
    if mode == "single":
        logits = stochastic_logits(key, apply_fn, variables, x, num_samples=1, input_noise=False)
    else:
        logits = stochastic_logits(key, apply_fn, variables, x, num_samples=num_samples, chunk_size=chunk_size)
    return class_scores(logits, mode)


def smoothed_predict(key: jax.Array, apply_fn: Callable, variables, x: jax.Array, *, num_samples: int, mode: str,
                     top_k: int | None = None, chunk_size: int | None = None) -> jax.Array:
    """Predictions of the smoothed classifier on images ``x`` (B, H, W, C) in [0, 1] (see ``smoothed_scores``).

    Returns (B,) int32 classes (the shape of ``certification.predict``; SIAM never abstains) when ``top_k`` is
    None, else (B, top_k) int32 classes, best first. Ties go to the lower class index.
    """
    scores = smoothed_scores(key, apply_fn, variables, x, num_samples=num_samples, mode=mode, chunk_size=chunk_size)
    if top_k is None:
        return top_k_classes(scores, 1)[:, 0]
    return top_k_classes(scores, top_k)


def smoothed_apply_fn(apply_fn: Callable, *, num_samples: int, mode: str, key: jax.Array,
                      chunk_size: int | None = None) -> Callable:
    """The smoothed classifier with fixed randomness as a deterministic ``f(variables, images) -> (B, K) scores``.

    Fits the base-classifier contract (argmax = ``smoothed_predict``'s top-1), e.g. for training-time evaluation
    and transfer/black-box attacks. Every call uses the same ``key``.
    """
    check_mode(mode)

    def f(variables, images):
        return smoothed_scores(key, apply_fn, variables, images, num_samples=num_samples, mode=mode,
                               chunk_size=chunk_size)

    return f
