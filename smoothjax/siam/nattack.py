"""NAttack (Li et al. 2019, "NATTACK: Learning the Distributions of Adversarial Examples"), L-inf version.

A black-box attack: it only queries ``score_fn(images) -> (N, K)`` class probabilities (for SIAM, the smoothed
classifier's normalised scores) and never differentiates it. Per image it keeps a Gaussian search distribution
``N(mu, sigma^2 I)`` over a perturbation in tanh space:

    candidate_i = proj(0.5 * tanh(arctanh(2x - 1) + mu + sigma * z_i) + 0.5),  z_i ~ N(0, I),  i = 1..population

where ``proj`` clips into the L-inf box of radius ``epsilon`` around x and into [0, 1]. The loss of a candidate is
the C&W margin on log-probabilities ``max(0, log p_y - max_{c != y} log p_c)``; natural-evolution-strategy
update ``mu <- mu - lr / (population * sigma) * sum_i zscore(loss_i) z_i``. Defaults are the paper's:
population 300, sigma 0.1, lr 0.02, at most 500 iterations, ``mu`` initialised to N(0, 0.001^2).

An image counts as broken as soon as one queried candidate (the population or the mean's projection) is
classified (argmax of ``score_fn``) as another class; its search then stops. Every candidate lies in the box and
in [0, 1] by construction. Batches of images are attacked together (vectorised over the batch, which is sharded
over the devices of the 1-D ``data`` mesh, of every process, as in training); each iteration is one jitted step,
compiled once per score function and settings, and the Python loop stops early when every image is broken.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from smoothjax import parallel
from smoothjax.parallel import DATA_AXIS

_CLIP = 1 - 1e-6  # keeps arctanh finite at pixel values 0 and 1


def to_tanh_space(x: jax.Array) -> jax.Array:
    """``arctanh(2x - 1)`` with x in [0, 1] slightly shrunk so that 0 and 1 map to finite values."""
    return jnp.arctanh((2 * x - 1) * _CLIP)


def candidates(x: jax.Array, mu: jax.Array, z: jax.Array, sigma, epsilon) -> jax.Array:
    """(n, B, H, W, C) projected candidates for images x (B, H, W, C), means mu (B, ...) and draws z (n, B, ...).

    Guarantee: ``|candidate - x| <= epsilon`` and ``0 <= candidate <= 1`` elementwise.
    """
    raw = 0.5 * jnp.tanh(to_tanh_space(x)[None] + mu[None] + sigma * z) + 0.5
    return jnp.clip(jnp.clip(raw, x[None] - epsilon, x[None] + epsilon), 0.0, 1.0)


def margin_loss(probs: jax.Array, y: jax.Array) -> jax.Array:
    """``max(0, log p_y - max_{c != y} log p_c)`` for (..., K) probabilities and (...) labels (0 when misclassified
    or tied)."""
    logp = jnp.log(jnp.maximum(probs, 1e-30))
    true = jnp.take_along_axis(logp, y[..., None], -1)[..., 0]
    other = jnp.max(jnp.where(jax.nn.one_hot(y, probs.shape[-1], dtype=bool), -jnp.inf, logp), -1)
    return jnp.maximum(true - other, 0.0)


def make_nattack_step(score_fn: Callable, *, population: int = 300, sigma: float = 0.1,
                      learning_rate: float = 0.02, chunk_size: int | None = None, mesh=None) -> Callable:
    """One NES iteration ``step(x, y, mu, done, key, epsilon, *score_args) -> (mu, broken, adv)`` (pure; jit it).

    ``x`` (B, H, W, C) any float dtype (the draws, candidates and ``mu`` are float32 whatever it is, so bfloat16
    images give exactly the result of their float32 copies), ``y`` (B,), ``mu`` (B, H, W, C), ``done`` (B,) bool
    (broken earlier: mu is frozen), ``epsilon`` the L-inf budget (may be traced). ``broken`` (B,) bool: some
    candidate of this iteration is misclassified; ``adv`` (B, H, W, C): the first such candidate (the mean's
    projection first, then the population in order), else the mean's projection. ``score_fn(images (B, ...),
    *score_args) -> (B, K)`` is ``jax.vmap``-ed over the candidates, ``chunk_size`` of them at a time (None = all at
    once): every candidate of image b is scored with the same randomness, so a stochastic score_fn with a fixed key
    is one deterministic classifier. With ``mesh``, the draws are laid out batch-sharded over its ``data`` axis (the
    batch is data-parallel); with JAX's partitionable threefry the values do not depend on the number of devices.
    """

    def scores_of(images, score_args):  # (n, B, ...) -> (n, B, K)
        one = lambda im: score_fn(im, *score_args)  # noqa: E731
        if chunk_size is None or chunk_size >= images.shape[0]:
            return jax.vmap(one)(images)
        return jax.lax.map(one, images, batch_size=chunk_size)

    def step(x, y, mu, done, key, epsilon, *score_args):
        x, mu = x.astype(jnp.float32), mu.astype(jnp.float32)  # the search runs in float32 whatever x's dtype
        z = jax.random.normal(key, (population,) + x.shape, jnp.float32)
        if mesh is not None:
            z = jax.lax.with_sharding_constraint(z, NamedSharding(mesh, P(None, DATA_AXIS)))
        cands = candidates(x, mu, jnp.concatenate([jnp.zeros_like(z[:1]), z]), sigma, epsilon)  # mean first
        probs = scores_of(cands, score_args)
        wrong = jnp.argmax(probs, -1) != y[None]  # (1 + n, B)
        broken = jnp.any(wrong, 0)
        first = jnp.argmax(wrong, 0)  # index of the first misclassified candidate (0 when none)
        adv = jnp.take_along_axis(cands, first[None, :, None, None, None], 0)[0]
        loss = margin_loss(probs[1:], y[None])  # (n, B)
        score = (loss - loss.mean(0)) / (loss.std(0) + 1e-7)
        grad = jnp.einsum("nb,nb...->b...", score, z) / (population * sigma)
        new_mu = jnp.where((done | broken)[:, None, None, None], mu, mu - learning_rate * grad)
        return new_mu, broken, adv

    return step


@functools.lru_cache(maxsize=32)
def _compiled_step(score_fn, population, sigma, learning_rate, chunk_size, mesh):
    """One jitted step per (score_fn, settings, mesh): repeated ``nattack`` calls (batches, settings) reuse it."""
    return jax.jit(make_nattack_step(score_fn, population=population, sigma=sigma, learning_rate=learning_rate,
                                     chunk_size=chunk_size, mesh=mesh))


@functools.lru_cache(maxsize=32)
def _compiled_predict(score_fn):
    return jax.jit(lambda x, *score_args: jnp.argmax(score_fn(x, *score_args), -1))


def nattack(score_fn: Callable, x, y, key: jax.Array, *, epsilon, population: int = 300, sigma: float = 0.1,
            learning_rate: float = 0.02, max_iterations: int = 500, chunk_size: int | None = None,
            score_args: tuple = (), active=None, mesh=None, progress: Callable[[int], None] | None = None) -> dict:
    """Runs NAttack on a batch, data-parallel; returns NumPy ``{"success" (B,) bool, "adversarial" (B, H, W, C),
    "queries" (B,) int64, "iterations" int}``.

    ``score_fn(images (N, H, W, C) in [0, 1], *score_args) -> (N, K)`` probabilities (only outputs are used; pass
    a function object that lives across calls, e.g. defined once at module level, and its changing inputs —
    variables, keys, noise levels — in ``score_args``, so the jitted step compiles once); ``x`` (B, H, W, C) in
    [0, 1], ``y`` (B,) labels: NumPy arrays equal on every process, or global jax.Arrays (e.g. a batch assembled
    with ``parallel.to_global`` on several processes; gathered with ``parallel.fetch``); ``epsilon`` L-inf budget in pixel
    units.
    ``active`` (B,) bool (default all): rows that are False are not attacked (reported unbroken with 0 queries) —
    pass a fixed-size batch and mask its unused tail. The batch is sharded over the ``data`` axis of ``mesh``
    (default ``parallel.make_mesh()``: all devices), padded to a multiple of the device count with inactive rows.
    When B is already such a multiple, score_fn sees the same shapes on any number of devices and the result does
    not depend on the device count (random draws use partitionable threefry). ``adversarial`` is the
    misclassified candidate for broken images and x itself otherwise, so it
    always lies in the box and [0, 1]. ``queries`` counts score_fn evaluations per image (population + 1 per
    iteration run). Images already misclassified count as broken with 1 query. ``progress(i)`` is called after
    each iteration. Multi-process: every process calls ``nattack`` with the same arguments (the same global batch)
    and gets the whole result; ``score_args`` are replicated with ``parallel.replicate``.
    """
    for name, v in (("population", population), ("max_iterations", max_iterations)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} is not allowed; it must be an int >= 1")
    if not (np.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon={epsilon!r} is not allowed; it must be a finite number >= 0 (pixel L-inf units)")
    mesh = parallel.make_mesh() if mesh is None else mesh
    step = _compiled_step(score_fn, population, float(sigma), float(learning_rate), chunk_size, mesh)
    x, y = parallel.fetch(x).astype(np.float32), parallel.fetch(y).astype(np.int32)
    b = x.shape[0]
    active = np.ones(b, bool) if active is None else parallel.fetch(active).astype(bool)
    if active.shape != (b,):
        raise ValueError(f"active has shape {active.shape}; it must be one bool per image, shape ({b},)")
    pad = (-b) % mesh.devices.size
    shard = parallel.batch_sharding(mesh)
    gx = jax.device_put(np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]), shard)
    gy = jax.device_put(np.concatenate([y, np.zeros((pad,), y.dtype)]), shard)
    score_args = parallel.replicate(tuple(score_args), mesh)
    done = np.concatenate([(parallel.fetch(_compiled_predict(score_fn)(gx, *score_args))[:b] != y) | ~active,
                           np.ones(pad, bool)])
    adversarial = x.copy()
    queries = active.astype(np.int64)
    init_key, key = jax.random.split(key)
    # Placed from a host copy (the same on every process), as device_put requires when the mesh spans processes.
    mu = jax.device_put(np.asarray(0.001 * jax.random.normal(init_key, gx.shape, gx.dtype)), shard)
    eps = jnp.float32(epsilon)
    iterations = 0
    while iterations < max_iterations and not done.all():
        mu, broken, adv = step(gx, gy, mu, jax.device_put(done, shard), jax.random.fold_in(key, iterations), eps,
                               *score_args)
        broken, adv = parallel.fetch(broken), parallel.fetch(adv)
        queries += np.where(done[:b], 0, population + 1)
        new = (broken & ~done)[:b]
        adversarial[new] = adv[:b][new]
        done = done | broken
        iterations += 1
        if progress is not None:
            progress(iterations)
    return {"success": done[:b] & active, "adversarial": adversarial, "queries": queries, "iterations": iterations}
