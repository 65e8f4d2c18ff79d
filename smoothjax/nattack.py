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
in [0, 1] by construction. Batches of images are attacked together (vectorised over the batch); each iteration is
one jitted step and the Python loop stops early when every image is broken.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

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


def make_nattack_step(score_fn: Callable, *, epsilon, population: int = 300, sigma: float = 0.1,
                      learning_rate: float = 0.02, chunk_size: int | None = None) -> Callable:
    """One NES iteration ``step(x, y, mu, done, key) -> (mu, broken, adv)`` (pure; jit it).

    ``x`` (B, H, W, C), ``y`` (B,), ``mu`` (B, H, W, C), ``done`` (B,) bool (broken earlier: mu is frozen).
    ``broken`` (B,) bool: some candidate of this iteration is misclassified; ``adv`` (B, H, W, C): the first such
    candidate (the mean's projection first, then the population in order), else the mean's projection.
    ``score_fn`` is called on (population * B) images ``chunk_size`` candidates at a time (None = all).
    """

    def scores_of(images):  # (n, B, ...) -> (n, B, K)
        n, b = images.shape[:2]
        flat = images.reshape((n * b,) + images.shape[2:])
        if chunk_size is None or chunk_size >= n * b:
            out = score_fn(flat)
        else:
            pad = (-flat.shape[0]) % chunk_size
            padded = jnp.concatenate([flat, jnp.zeros((pad,) + flat.shape[1:], flat.dtype)])
            out = jax.lax.map(score_fn, padded.reshape((-1, chunk_size) + flat.shape[1:])).reshape(
                (padded.shape[0], -1))[: flat.shape[0]]
        return out.reshape((n, b, -1))

    def step(x, y, mu, done, key):
        z = jax.random.normal(key, (population,) + x.shape, x.dtype)
        cands = candidates(x, mu, jnp.concatenate([jnp.zeros_like(z[:1]), z]), sigma, epsilon)  # mean first
        probs = scores_of(cands)
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


def nattack(score_fn: Callable, x: jax.Array, y: jax.Array, key: jax.Array, *, epsilon, population: int = 300,
            sigma: float = 0.1, learning_rate: float = 0.02, max_iterations: int = 500,
            chunk_size: int | None = None, progress: Callable[[int], None] | None = None) -> dict:
    """Runs NAttack on a batch; returns NumPy ``{"success" (B,) bool, "adversarial" (B, H, W, C), "queries" (B,)
    int64, "iterations" int}``.

    ``score_fn(images (N, H, W, C) in [0, 1]) -> (N, K)`` probabilities (only outputs are used); ``x`` (B, H, W, C)
    in [0, 1], ``y`` (B,) labels; ``epsilon`` L-inf budget in pixel units. ``adversarial`` is the misclassified
    candidate for broken images and x itself otherwise, so it always lies in the box and [0, 1]. ``queries``
    counts score_fn evaluations per image (population + 1 per iteration run). Images already misclassified
    count as broken with 1 query. ``progress(i)`` is called after each iteration.
    """
    for name, v in (("population", population), ("max_iterations", max_iterations)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} is not allowed; it must be an int >= 1")
    if not (np.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon={epsilon!r} is not allowed; it must be a finite number >= 0 (pixel L-inf units)")
    step = jax.jit(make_nattack_step(score_fn, epsilon=epsilon, population=population, sigma=sigma,
                                     learning_rate=learning_rate, chunk_size=chunk_size))
    x, y = jnp.asarray(x), jnp.asarray(y)
    done = np.asarray(jnp.argmax(score_fn(x), -1) != y)
    adversarial = np.array(x)
    queries = np.ones(x.shape[0], np.int64)
    init_key, key = jax.random.split(key)
    mu = 0.001 * jax.random.normal(init_key, x.shape, x.dtype)
    iterations = 0
    while iterations < max_iterations and not done.all():
        mu, broken, adv = step(x, y, mu, jnp.asarray(done), jax.random.fold_in(key, iterations))
        broken, adv = np.asarray(broken), np.asarray(adv)
        queries += np.where(done, 0, population + 1)
        new = broken & ~done
        adversarial[new] = adv[new]
        done = done | broken
        iterations += 1
        if progress is not None:
            progress(iterations)
    return {"success": done, "adversarial": adversarial, "queries": queries, "iterations": iterations}
