"""A small convolutional network for 8x8 digits: the model of the default job and of most tests."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from smoothjax.models.layers import Normalize


class SmallCNN(nn.Module):
    """conv3x3(32) -> ReLU -> conv3x3(64, stride 2) -> ReLU -> flatten -> dense(128) -> ReLU -> dense.

    Input: (B, H, W, C) images in [0, 1]. Output: (B, num_classes) float32 logits. No batch norm, so its variables
    hold only ``params`` and train and inference modes compute the same function. ``dtype`` is the compute dtype
    (e.g. bfloat16; inputs are normalised in float32 first), ``param_dtype`` the parameters' (float32).
    """

    num_classes: int
    mean: Sequence[float]
    std: Sequence[float] | None
    width: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # Same function in both modes.
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = Normalize(self.mean, self.std, dtype=self.dtype)(x)
        x = nn.relu(nn.Conv(32 * self.width, (3, 3), padding=1, **kw)(x))
        x = nn.relu(nn.Conv(64 * self.width, (3, 3), strides=2, padding=1, **kw)(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(128 * self.width, **kw)(x))
        return nn.Dense(self.num_classes, **kw)(x).astype(jnp.float32)
