"""ResNets: the He et al. (2016) CIFAR ResNets used by Cohen et al. and Salman et al., and ResNet-50 (ImageNet).

Layouts follow the PyTorch reference models so that published checkpoints map one-to-one: convolutions have no
bias; each is followed by batch norm (PyTorch defaults: momentum 0.1, i.e. Flax momentum 0.9, epsilon 1e-5);
a shortcut is a 1x1 convolution + batch norm whenever the shape changes (``cifar_resnet110`` with 10 classes has
1,730,714 parameters); ResNet-50 is torchvision's (stride on the 3x3 convolution of the bottleneck).

``dtype`` is the compute dtype (bfloat16 on GPU/TPU: inputs are normalised in float32 first, logits returned in
float32) and ``param_dtype`` the parameters' (float32); batch-norm statistics and scales stay float32 whatever the
compute dtype. ``barrier`` and ``conv`` choose XLA:CPU workarounds (same forward values; gradients equal to float
rounding): the fusion barrier at the end of each block (``layers.fusion_barrier``) and the convolution whose input gradient is a
forward convolution (``cpu_conv.select``: ``"xla"``, ``"cpu_vjp"``; None = ``"cpu_vjp"`` on CPU only). Both are on
by default on CPU and off elsewhere.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from smoothjax.models import cpu_conv
from smoothjax.models.layers import Normalize, fusion_barrier

_BatchNorm = partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)
_he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (expansion 1)."""

    features: int
    strides: int = 1
    barrier: bool | None = None
    dtype: Any = jnp.float32
    conv: str | None = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        conv = partial(nn.Conv, use_bias=False, kernel_init=_he_normal, dtype=self.dtype, param_dtype=self.param_dtype,
                       conv_general_dilated=cpu_conv.select(self.conv))
        norm = partial(_BatchNorm, use_running_average=not train, dtype=self.dtype)
        y = conv(self.features, (3, 3), self.strides, padding=1)(x)
        y = nn.relu(norm()(y))
        y = conv(self.features, (3, 3), 1, padding=1)(y)
        y = norm()(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = conv(self.features, (1, 1), self.strides, padding=0)(x)
            x = norm()(x)
        return fusion_barrier(nn.relu(x + y), self.barrier)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 bottleneck block with expansion 4 (torchvision ResNet-50 layout)."""

    features: int
    strides: int = 1
    barrier: bool | None = None
    dtype: Any = jnp.float32
    conv: str | None = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        conv = partial(nn.Conv, use_bias=False, kernel_init=_he_normal, dtype=self.dtype, param_dtype=self.param_dtype,
                       conv_general_dilated=cpu_conv.select(self.conv))
        norm = partial(_BatchNorm, use_running_average=not train, dtype=self.dtype)
        y = nn.relu(norm()(conv(self.features, (1, 1))(x)))
        y = nn.relu(norm()(conv(self.features, (3, 3), self.strides, padding=1)(y)))
        y = norm()(conv(self.features * 4, (1, 1))(y))
        if self.strides != 1 or x.shape[-1] != self.features * 4:
            x = norm()(conv(self.features * 4, (1, 1), self.strides)(x))
        return fusion_barrier(nn.relu(x + y), self.barrier)


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2: a 3x3 stem, three stages of n BasicBlocks (widths 16, 32, 64 times
    ``width``, strides 1, 2, 2), global average pooling and a linear classifier.

    Input: (B, H, W, C) images in [0, 1] (normalised by the first layer). Output: (B, num_classes) logits.
    """

    depth: int
    num_classes: int
    mean: Sequence[float]
    std: Sequence[float] | None
    width: int = 1
    barrier: bool | None = None
    dtype: Any = jnp.float32
    conv: str | None = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        if (self.depth - 2) % 6 != 0 or self.depth < 8:
            raise ValueError(f"depth={self.depth} is not allowed; a CIFAR ResNet has depth 6n+2 (20, 32, 44, 56, 110)")
        blocks = (self.depth - 2) // 6
        x = Normalize(self.mean, self.std, dtype=self.dtype)(x)
        x = nn.Conv(16 * self.width, (3, 3), padding=1, use_bias=False, kernel_init=_he_normal, dtype=self.dtype,
                    param_dtype=self.param_dtype, conv_general_dilated=cpu_conv.select(self.conv))(x)
        x = nn.relu(_BatchNorm(use_running_average=not train, dtype=self.dtype)(x))
        for stage, features in enumerate((16, 32, 64)):
            for block in range(blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(features * self.width, strides, self.barrier, self.dtype, self.conv,
                               self.param_dtype)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)(x).astype(jnp.float32)


class ResNet50(nn.Module):
    """torchvision's ResNet-50 for 224x224 ImageNet images in [0, 1]; (B, num_classes) logits.

    ``stage_sizes`` (bottleneck blocks per stage) and ``base_width`` (channels of the stem and of the first stage's
    bottleneck; stage s uses ``base_width * 2**s``, its blocks output 4x that) give smaller networks of the same
    layout, e.g. for tests; the defaults are ResNet-50's.
    """

    num_classes: int
    mean: Sequence[float]
    std: Sequence[float] | None
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    base_width: int = 64
    barrier: bool | None = None
    dtype: Any = jnp.float32
    conv: str | None = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Normalize(self.mean, self.std, dtype=self.dtype)(x)
        x = nn.Conv(self.base_width, (7, 7), 2, padding=3, use_bias=False, kernel_init=_he_normal, dtype=self.dtype,
                    param_dtype=self.param_dtype, conv_general_dilated=cpu_conv.select(self.conv))(x)
        x = nn.relu(_BatchNorm(use_running_average=not train, dtype=self.dtype)(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = Bottleneck(self.base_width * 2**stage, strides, self.barrier, self.dtype, self.conv,
                               self.param_dtype)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)(x).astype(jnp.float32)
