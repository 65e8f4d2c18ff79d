"""L2 attacks on the *soft* Gaussian-smoothed classifier (SmoothAdv, Salman et al. 2019): multi-noise PGD and DDN.

The objective of both attacks is the cross-entropy of the soft smoothed classifier estimated from m fixed noise
draws eta_1..eta_m (pixel units, drawn once by the caller and reused over all steps)::

    L(x') = -log(max((1/m) sum_j softmax(f(x' + eta_j))_y, 1e-20))          (m = 1: plain cross-entropy)

The m draws are evaluated with ``jax.vmap`` over the noise axis (one forward pass of m * B images, no Python loop
over m) and every image has one perturbation shared by its m draws. Everything is jittable: ``epsilon``,
``step_size``, ``gamma`` and ``init_norm`` may be traced (e.g. an epsilon warm-up inside a train step), while
``num_steps``, ``no_grad``, ``levels`` and ``unroll`` are static. The step loop is unrolled in Python on XLA:CPU
(gradients inside a ``lax`` loop body hit a slow path there, docs/performance.md) and is a ``lax.fori_loop``
elsewhere, whose body compiles once whatever T is (``unroll``: None = that choice, True / False to force it;
``smoothjax.loops``); both give the same result.

Images are (B, H, W, C) in [0, 1]; budgets are L2 norms in pixel units over the whole image (H * W * C values).
The reference's ``--epsilon 64`` means 64/256 = 0.25 here. Every result satisfies ``||x_adv - x||_2 <= epsilon``
(up to float rounding, ~1e-7 relative) and ``0 <= x_adv <= 1``.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from smoothjax.loops import resolve_unroll, step_loop

_LOG_FLOOR = math.log(1e-20)  # The reference's clamp of the averaged probability.


# ------------------------------------------------------------------------------------------------- validation
def _concrete(value):
    """``np.asarray(value)``, or None when it is a tracer (checks on values run only outside jit)."""
    try:
        return np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_nonnegative(name: str, value) -> None:
    v = _concrete(value)
    if v is not None and (v.ndim != 0 or not np.isfinite(v) or v < 0):
        raise ValueError(f"{name}={value!r} is not allowed; it must be a finite scalar >= 0 (pixel L2 units)")


def _check_steps(num_steps) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r} is not allowed; it must be a Python int >= 1 (static)")
    return int(num_steps)


def _check_inputs(x, y, noise):
    """Returns the noise as an (m, B, H, W, C) array (zeros of m = 1 when ``noise`` is None)."""
    if x.ndim != 4:
        raise ValueError(f"x has shape {x.shape}; attacks take a batch of images (B, H, W, C)")
    if y.shape != x.shape[:1]:
        raise ValueError(f"y has shape {y.shape}; it must hold one integer label per image, shape {x.shape[:1]}")
    if noise is None:
        return jnp.zeros((1,) + x.shape, x.dtype)
    if noise.ndim != 5 or tuple(noise.shape[1:]) != tuple(x.shape) or noise.shape[0] < 1:
        shape = ", ".join(map(str, x.shape))
        raise ValueError(f"noise has shape {noise.shape}; it must be (m, *x.shape) = (m, {shape}) with m >= 1")
    return noise


# ------------------------------------------------------------------------------------------------- objective
def smoothed_cross_entropy(apply_fn: Callable, variables, x_adv: jax.Array, y: jax.Array,
                           noise: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-image cross-entropy of the soft smoothed classifier over fixed noise draws, and the raw logits.

    Args:
      apply_fn: ``apply_fn(variables, images) -> logits``, images (N, H, W, C) in [0, 1].
      variables: the model's variables (held fixed).
      x_adv: (B, H, W, C) images (the noise is added to them; nothing is clipped).
      y: (B,) integer labels.
      noise: (m, B, H, W, C) noise in pixel units; draw j of image b is ``noise[j, b]``.

    Returns:
      ``(loss, logits)``: loss (B,) float32 = -log(max(mean_j softmax(f(x_adv + noise_j))_y, 1e-20)), computed as a
      log-sum-exp of log-softmaxes (exact where the reference's float32 softmax would underflow), and for m = 1
      the plain cross-entropy with no floor; logits (m, B, K) of the m * B noisy images (one vmapped forward pass).
    """
    logits = jax.vmap(lambda n: apply_fn(variables, x_adv + n))(noise)
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    log_p_y = jnp.take_along_axis(log_p, jnp.broadcast_to(y[None, :, None], log_p.shape[:2] + (1,)), -1)[..., 0]
    m = noise.shape[0]
    if m == 1:
        return -log_p_y[0], logits
    log_mean = jax.nn.logsumexp(log_p_y, axis=0) - math.log(m)
    return -jnp.maximum(log_mean, _LOG_FLOOR), logits


def _per_image_norm(v: jax.Array) -> jax.Array:
    """(B,) L2 norms of a (B, ...) array over all non-batch axes."""
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(1, v.ndim))))


def _expand(s: jax.Array, like: jax.Array) -> jax.Array:
    return s.reshape(s.shape + (1,) * (like.ndim - s.ndim))


def _unit_direction(g: jax.Array, key: jax.Array) -> jax.Array:
    """``g / ||g||`` per image; an image whose ``g`` is exactly zero gets a uniformly random unit direction."""
    norm = _per_image_norm(g)
    random = jax.random.normal(key, g.shape, g.dtype)
    random = random / _expand(jnp.maximum(_per_image_norm(random), 1e-12), g)
    return jnp.where(_expand(norm > 0, g), g / _expand(jnp.where(norm > 0, norm, 1.0), g), random)


def project_l2(delta: jax.Array, radius) -> jax.Array:
    """Scales each image's perturbation in (B, ...) ``delta`` onto the L2 ball of ``radius`` (unchanged if inside).

    ``radius`` is a scalar (may be traced) or (B,). A perturbation inside the ball is returned bit for bit; one
    outside is multiplied by ``radius / ||delta||`` (norm equal to ``radius`` up to float rounding). Scaling towards
    0 keeps ``x + delta`` inside [0, 1] when it was.
    """
    norm = _per_image_norm(delta)
    radius = jnp.broadcast_to(jnp.asarray(radius, delta.dtype), norm.shape)
    scale = jnp.where(norm > radius, radius / jnp.where(norm > 0, norm, 1.0), 1.0)
    return delta * _expand(scale, delta)


def _clip_to_box(x: jax.Array, delta: jax.Array) -> jax.Array:
    return jnp.clip(x + delta, 0.0, 1.0) - x


def _typed_key(key):
    """The key of the random directions as a typed key; step t uses ``fold_in(key, t)``."""
    if key is None:
        raise ValueError("key=None is not allowed; pass a PRNG key (jax.random.key) for the random directions")
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    return key


# ------------------------------------------------------------------------------------------------------- PGD
def smooth_pgd_l2(apply_fn: Callable, variables, x: jax.Array, y: jax.Array, noise: jax.Array | None, *,
                  epsilon, num_steps: int, step_size=None, no_grad: bool = False, key: jax.Array,
                  unroll: bool | None = None) -> jax.Array:
    """L2 PGD on the soft smoothed classifier (SmoothAdv_PGD), as the reference ``PGD_L2`` does it.

    delta starts at 0. Each of the ``num_steps`` steps computes the gradient g of
    ``smoothed_cross_entropy`` with respect to delta (one vmapped forward/backward pass over the m noise draws),
    normalises it to unit L2 norm per image (a zero gradient gets a random unit direction), sets
    ``delta += step_size * g / ||g||``, clips ``x + delta`` to [0, 1] and projects delta onto the L2 ball of
    radius ``epsilon``. (For a zero gradient the reference steps along an unnormalised N(0, I) draw, sqrt(H W C)
    times longer, which the projection then cuts back; here the random direction has unit norm like the others.)

    Args:
      apply_fn: ``apply_fn(variables, images) -> logits`` in inference mode (images NHWC in [0, 1]).
      variables: model variables, not differentiated (wrap in ``jax.lax.stop_gradient`` inside a train step).
      x: (B, H, W, C) clean images in [0, 1].
      y: (B,) integer labels (the attack is untargeted: it lowers the smoothed probability of ``y``).
      noise: (m, B, H, W, C) noise in pixel units, fixed over all steps, or None for the base classifier (m = 1,
        no noise). A training step reuses the same noise for its update.
      epsilon: L2 budget per image in pixel units (>= 0; may be traced).
      num_steps: T >= 1, static.
      step_size: per-step L2 length; default ``2 * epsilon / num_steps`` (the reference's).
      no_grad: use the gradient-free estimate ``-(1/m) sum_j p_y(x + delta + eta_j) * eta_j`` (forward passes
        only) in place of the gradient; needs m > 1.
      key: PRNG key for the random directions of zero gradients (required; step t uses ``fold_in(key, t)``).
      unroll: static; None (default) = unroll the T steps in Python on the CPU backend and run them in a
        ``lax.fori_loop`` elsewhere; True / False force either (``smoothjax.loops``). Same result either way.

    Returns:
      x_adv, (B, H, W, C) float, with ``||x_adv - x||_2 <= epsilon`` per image and ``0 <= x_adv <= 1``.
    """
    noise = _check_inputs(x, y, noise)
    num_steps = _check_steps(num_steps)
    resolve_unroll(unroll)
    _check_nonnegative("epsilon", epsilon)
    if no_grad and noise.shape[0] < 2:
        raise ValueError(f"no_grad=True needs m > 1 noise draws (got noise of shape {noise.shape}); the estimate "
                         "-(1/m) sum_j p_y(x + delta + eta_j) eta_j is 0 or meaningless for m = 1 or no noise")
    if step_size is None:
        step_size = 2.0 * jnp.asarray(epsilon, x.dtype) / num_steps
    else:
        _check_nonnegative("step_size", step_size)

    def loss_sum(delta):
        loss, _ = smoothed_cross_entropy(apply_fn, variables, x + delta, y, noise)
        return jnp.sum(loss)  # Images are independent, so d/d(delta_b) of the sum is image b's own gradient.

    def no_grad_direction(delta):
        _, logits = smoothed_cross_entropy(apply_fn, variables, x + delta, y, noise)
        p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        p_y = jnp.take_along_axis(p, jnp.broadcast_to(y[None, :, None], p.shape[:2] + (1,)), -1)[..., 0]
        return -jnp.mean(_expand(p_y, noise).astype(noise.dtype) * noise, axis=0)

    key = _typed_key(key)

    def step(t, delta):
        g = no_grad_direction(delta) if no_grad else jax.grad(loss_sum)(delta)
        delta = delta + step_size * _unit_direction(g, jax.random.fold_in(key, t))
        return project_l2(_clip_to_box(x, delta), epsilon)

    return x + step_loop(step, jnp.zeros_like(x), num_steps, unroll=unroll)


# ------------------------------------------------------------------------------------------------------- DDN
def _mode(predictions: jax.Array, num_classes: int) -> jax.Array:
    """(B,) most frequent class over the leading (m) axis of (m, B) predictions; ties go to the smallest class."""
    counts = jnp.sum(jax.nn.one_hot(predictions, num_classes, dtype=jnp.int32), axis=0)
    return jnp.argmax(counts, axis=-1)


def _quantize(v: jax.Array, levels: int) -> jax.Array:
    return jnp.round(v * (levels - 1)) / (levels - 1)


def ddn_gamma_for_prediction(epsilon: float, num_steps: int) -> float:
    """The reference ``predict.py``'s DDN norm factor for an attack of budget ``epsilon`` in ``num_steps`` steps:
    ``1 - (3 / 510 / epsilon) ** (1 / num_steps)``, so the norm can shrink from ~epsilon to 1.5/255 in T steps."""
    if not epsilon > 0:
        raise ValueError(f"epsilon={epsilon!r} is not allowed for the prediction-time DDN factor; need epsilon > 0")
    return 1.0 - (3.0 / 510.0 / float(epsilon)) ** (1.0 / _check_steps(num_steps))


def smooth_ddn(apply_fn: Callable, variables, x: jax.Array, y: jax.Array, noise: jax.Array | None, *, epsilon,
               num_steps: int, gamma=0.05, init_norm=1.0, levels: int | None = 256, key: jax.Array,
               unroll: bool | None = None) -> jax.Array:
    """Decoupled direction and norm (DDN, Rony et al. 2019) on the soft smoothed classifier (SmoothAdv_DDN).

    As the reference ``DDN``: delta starts at 0 and the norm budget rho at ``init_norm``. Step i (0-based) of T:
    the learning rate is ``0.01 + 0.99 * (1 + cos(pi * (i + 1) / T)) / 2`` (SGD lr 1, cosine annealing to 0.01,
    the scheduler stepped before each update); the image counts as adversarial when the prediction (for m > 1 the
    mode of the m noisy argmaxes) differs from ``y``, and the smallest adversarial delta so far is kept; delta
    moves by lr along the unit-normalised gradient of ``smoothed_cross_entropy`` (a zero gradient: a random unit
    direction); rho is multiplied by ``1 - gamma`` if adversarial, else ``1 + gamma``, and capped at
    ``||max(x, 1 - x)||``; delta is rescaled to norm rho, then ``x + delta`` quantised to ``levels`` levels and
    clipped to [0, 1]. The result is the best adversarial delta (0 if none was found), projected onto the
    epsilon-ball and quantised.

    Deviation from the reference, for the guarantee below: the reference ends by rounding delta itself to the
    1/255 grid after projecting, which can leave the ball (by up to sqrt(H W C) / 510) and the box; here x + delta
    is then clipped to [0, 1] and projected onto the ball once more.

    Args:
      apply_fn, variables, x, y, noise, key, unroll: as for ``smooth_pgd_l2`` (m = 1 or None: plain argmax
        decision).
      epsilon: final L2 budget per image in pixel units (>= 0; may be traced). The iterates are not limited by it.
      num_steps: T >= 1, static.
      gamma: norm factor (reference default 0.05 for training; ``ddn_gamma_for_prediction`` for evaluation).
      init_norm: initial rho (reference: 1.0 = 256/256 for evaluation, the warmed-up epsilon for training).
      levels: quantisation levels (256 for 8-bit images), or None for no quantisation.

    Returns:
      x_adv, (B, H, W, C), with ``||x_adv - x||_2 <= epsilon`` per image and ``0 <= x_adv <= 1``.
    """
    noise = _check_inputs(x, y, noise)
    num_steps = _check_steps(num_steps)
    resolve_unroll(unroll)
    _check_nonnegative("epsilon", epsilon)
    _check_nonnegative("init_norm", init_norm)
    if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int) or levels < 2):
        raise ValueError(f"levels={levels!r} is not allowed; use None (no quantisation) or an int >= 2")

    def loss_sum(delta):
        loss, logits = smoothed_cross_entropy(apply_fn, variables, x + delta, y, noise)
        return jnp.sum(loss), logits

    batch = x.shape[0]
    worst_norm = _per_image_norm(jnp.maximum(x, 1.0 - x))
    rho = jnp.broadcast_to(jnp.asarray(init_norm, x.dtype), (batch,))
    key = _typed_key(key)
    lrs = [0.01 + 0.99 * (1.0 + math.cos(math.pi * (i + 1) / num_steps)) / 2.0 for i in range(num_steps)]

    def step(i, carry):
        delta, rho, best_l2, best_delta = carry
        lr = lrs[i] if isinstance(i, int) else jnp.asarray(lrs, x.dtype)[i]  # the same float32 value either way
        step_key = jax.random.fold_in(key, i)
        l2 = _per_image_norm(delta)
        (_, logits), g = jax.value_and_grad(loss_sum, has_aux=True)(delta)
        predictions = jnp.argmax(logits, axis=-1)
        prediction = predictions[0] if noise.shape[0] == 1 else _mode(predictions, logits.shape[-1])
        is_adv = prediction != y
        better = is_adv & (l2 < best_l2)
        best_l2 = jnp.where(better, l2, best_l2)
        best_delta = jnp.where(_expand(better, x), delta, best_delta)

        delta = delta + lr * _unit_direction(g, step_key)
        rho = jnp.minimum(rho * (1.0 - (2.0 * is_adv.astype(x.dtype) - 1.0) * gamma), worst_norm)
        norm = _per_image_norm(delta)
        delta = delta * _expand(rho / jnp.where(norm > 0, norm, 1.0), x)
        adv = x + delta
        if levels is not None:
            adv = _quantize(adv, levels)
        return jnp.clip(adv, 0.0, 1.0) - x, rho, best_l2, best_delta

    init = (jnp.zeros_like(x), rho, worst_norm, jnp.zeros_like(x))
    _, _, _, best_delta = step_loop(step, init, num_steps, unroll=unroll)
    best_delta = project_l2(best_delta, epsilon)
    if levels is not None:
        best_delta = _quantize(best_delta, levels)
    return x + project_l2(_clip_to_box(x, best_delta), epsilon)
