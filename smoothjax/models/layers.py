"""Building blocks shared by the smoothjax models: input normalisation and the XLA:CPU fusion barrier."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` on NHWC images in [0, 1], the first layer of every model.

    Keeping normalisation inside the model means noise, perturbation budgets and the certified radius are all
    in pixel units, exactly as in the reference code (whose ``NormalizeLayer`` is the model's first module).
    ``std=None`` is the mean-only variant (SmoothAdv's ``InputCenterLayer``). Holds no variables.

    The input (noisy images arrive in float32, ``noise``) is normalised in float32 and only then cast to ``dtype``,
    the model's compute dtype: this is where a bfloat16 model rounds its input (docs/training.md#mixed-precision).
    """

    mean: Sequence[float]
    std: Sequence[float] | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))
        mean = jnp.asarray(self.mean, x.dtype)
        if mean.shape != (x.shape[-1],):
            raise ValueError(f"normalisation mean has {mean.shape[0]} channels but images have {x.shape[-1]}")
        x = x - mean
        if self.std is not None:
            x = x / jnp.asarray(self.std, x.dtype)
        return x.astype(self.dtype)


def fusion_barrier(y: jax.Array, enabled: bool | None = None) -> jax.Array:
    """Returns ``y`` unchanged in value, divided by an opaque 1.0 that XLA will not fuse through.

    On XLA:CPU, each weight gradient of a deep ResNet transposes an activation and fuses the cheap producers of
    that activation (batch norm, residual add, ReLU) into the transpose, recomputing every earlier block of the
    stage: the cost grows with depth squared. Ending each residual block with this barrier stops the
    duplication (a 3x faster ResNet-110 train step on 2 cores) and leaves every value bit-identical, since
    ``y / 1.0 == y`` exactly. On GPU/TPU it would only block good fusions, so ``enabled=None`` turns it on
    only when the default backend is CPU.
    """
    if enabled is None:
        enabled = jax.default_backend() == "cpu"
    if not enabled:
        return y
    return y / jax.lax.optimization_barrier(jnp.ones((), y.dtype))
