"""L-infinity PGD and expectation PGD (EPGD) on stochastic classifiers, as in SIAM's adversarial training.

PGD (Madry et al.): start at ``x + U(-eps, eps)`` (``random_start``), then ``num_steps`` times
``x' <- clip_[0,1](clip_[x-eps, x+eps](x' + step_size * sign(grad)))`` with ``step_size = eps / 4`` by default
(the reference: 7 steps of eps/4, eps = 8/255). The gradient is that of the cross-entropy of the stochastic model
``apply_fn(variables, images, key)`` (``models.make_stochastic_apply_fn``) or of a deterministic
``apply_fn(variables, images)`` (``models.contract``); every step draws fresh noise. EPGD
averages the gradient over ``num_passes`` stochastic passes per step (the reference's ``m_train``, default 8):
the gradient of the mean cross-entropy, which equals the mean of the per-pass gradients.

Images (B, H, W, C) in [0, 1]; ``epsilon`` is in pixel units (the reference's eps is already in pixel units: it
divides by the normalisation std before stepping in normalised space, so both step in the same box). Results
satisfy ``|x_adv - x| <= epsilon`` elementwise and ``0 <= x_adv <= 1``. The step loop is unrolled in Python on
XLA:CPU (gradients inside ``lax`` loops are slow there, docs/performance.md) and a ``lax.fori_loop`` elsewhere
(``unroll``, ``smoothjax.loops``); both give the same result.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from smoothjax.loops import resolve_unroll, step_loop
from smoothjax.models.contract import with_key


def project_linf(x_adv: jax.Array, x: jax.Array, epsilon) -> jax.Array:
    """Clips ``x_adv`` into the L-inf box of radius ``epsilon`` around ``x`` and then into [0, 1]."""
    return jnp.clip(jnp.clip(x_adv, x - epsilon, x + epsilon), 0.0, 1.0)


PASS_LOOPS = ("auto", "vmap", "scan")


def resolve_pass_loop(pass_loop: str) -> str:
    """``"vmap"`` or ``"scan"``: ``"auto"`` is ``"scan"`` on the CPU backend (with the models' custom-VJP conv,
    ``models.cpu_conv``, one pass at a time is ~4x faster there than vmapped per-pass weights, which become grouped
    convs) and ``"vmap"`` elsewhere. One-line ValueError for anything but ``PASS_LOOPS``."""
    if pass_loop not in PASS_LOOPS:
        raise ValueError(f"pass_loop={pass_loop!r} is not allowed; choose one of: {', '.join(PASS_LOOPS)}")
    if pass_loop == "auto":
        return "scan" if jax.default_backend() == "cpu" else "vmap"
    return pass_loop


def expectation_loss(apply_fn: Callable, variables, x: jax.Array, y: jax.Array, key: jax.Array,
                     num_passes: int = 1, pass_loop: str = "auto") -> jax.Array:
    """Summed-over-images cross-entropy averaged over ``num_passes`` stochastic passes (scalar float32).

    Pass j uses ``jax.random.split(key, num_passes)[j]``. ``pass_loop``: ``vmap`` runs the passes together;
    ``scan`` one at a time (``lax.map``); ``auto`` (default) = scan on CPU, vmap elsewhere. Same value either way.
    Speed on XLA:CPU for EPGD on the CPNI ResNet-20 (m = 8, batch 16, one gradient, 2-core Xeon): vmap 2.3-2.8 s
    (per-pass weights make grouped convs), scan 0.54-0.75 s with ``NoisyConv``'s custom-VJP conv
    (``models.cpu_conv``; 6.4 s with XLA's conv, whose input gradients in loop bodies are slow).
    """
    pass_loop = resolve_pass_loop(pass_loop)
    keys = jax.random.split(key, num_passes)
    apply_fn = with_key(apply_fn)
    one = lambda k: apply_fn(variables, x, k)  # noqa: E731
    logits = jax.vmap(one)(keys) if pass_loop == "vmap" else jax.lax.map(one, keys)  # (m, B, K)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y[None])
    return jnp.sum(jnp.mean(ce, axis=0))


def expectation_gradient(apply_fn: Callable, variables, x: jax.Array, y: jax.Array, key: jax.Array,
                         num_passes: int = 1, pass_loop: str = "auto") -> jax.Array:
    """(B, H, W, C) gradient of ``expectation_loss`` with respect to ``x``: the mean over passes of the per-pass
    gradients of each image's cross-entropy (EPGD's direction before the sign)."""
    return jax.grad(lambda xx: expectation_loss(apply_fn, variables, xx, y, key, num_passes, pass_loop))(x)


def _check(x, y, num_steps, num_passes):
    if x.ndim != 4:
        raise ValueError(f"x has shape {x.shape}; attacks take a batch of images (B, H, W, C)")
    if y.shape != x.shape[:1]:
        raise ValueError(f"y has shape {y.shape}; it must hold one integer label per image, shape {x.shape[:1]}")
    for name, v in (("num_steps", num_steps), ("num_passes", num_passes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "num_steps" else 1):
            raise ValueError(f"{name}={v!r} is not allowed; it must be a Python int >= "
                             f"{0 if name == 'num_steps' else 1} (static)")


def pgd_linf(apply_fn: Callable, variables, x: jax.Array, y: jax.Array, key: jax.Array, *, epsilon=8 / 255,
             num_steps: int = 7, step_size=None, num_passes: int = 1, random_start: bool = True,
             pass_loop: str = "auto", unroll: bool | None = None) -> jax.Array:
    """L-inf PGD (``num_passes`` = 1) or EPGD (> 1) maximising the cross-entropy of ``apply_fn``.

    Args:
      apply_fn: ``apply_fn(variables, images, key) -> logits`` (stochastic) or ``apply_fn(variables, images)``
        (deterministic; ``models.contract``).
      variables: the model's variables (held fixed; no gradient flows to them from the result).
      x: (B, H, W, C) clean images in [0, 1]; y: (B,) integer labels.
      key: PRNG key for the random start and the noise of every pass.
      epsilon: L-inf budget in pixel units (may be traced); step_size: default ``epsilon / 4``.
      num_steps, num_passes: static ints (steps >= 0, passes >= 1).
      random_start: start from a uniform draw in the box (clipped to [0, 1]).
      pass_loop: how EPGD's passes run (``expectation_loss``); the result does not depend on it.
      unroll: static; None (default) = unroll the steps on the CPU backend, a ``lax.fori_loop`` elsewhere; True /
        False force either (``smoothjax.loops``). The result does not depend on it.

    Returns:
      (B, H, W, C) float32 adversarial images with ``|x_adv - x| <= epsilon`` and values in [0, 1],
      gradient-stopped. The attack runs in float32 whatever the dtype of ``x`` (bfloat16 images give exactly the
      result of their float32 copies).
    """
    _check(x, y, num_steps, num_passes)
    resolve_unroll(unroll)
    step_size = epsilon / 4 if step_size is None else step_size
    start_key, key = jax.random.split(key)
    x = jax.lax.stop_gradient(x).astype(jnp.float32)  # steps and the random start in float32 whatever x's dtype
    x_adv = x
    if random_start:
        x_adv = project_linf(x + jax.random.uniform(start_key, x.shape, jnp.float32, -1.0, 1.0) * epsilon, x, epsilon)

    def step(t, x_adv):
        g = expectation_gradient(apply_fn, variables, x_adv, y, jax.random.fold_in(key, t), num_passes, pass_loop)
        return project_linf(x_adv + step_size * jnp.sign(g), x, epsilon)

    return jax.lax.stop_gradient(step_loop(step, x_adv, num_steps, unroll=unroll))
