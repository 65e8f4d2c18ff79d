"""SIAM's stochastic CIFAR ResNets: input Gaussian noise plus PNI / CPNI weight noise (Nemcovsky et al.).

``NoisyCifarResNet`` has the layout of ``CifarResNet`` (3x3 stem, three stages of BasicBlocks with widths
16/32/64 times ``width``, batch norm, global average pooling, linear head); every convolution is a ``NoisyConv``
and the head a ``NoisyDense``. Noise sources, all from the Flax rng stream ``"noise"``:

* input noise ``x + noise_sd * z`` on the [0, 1] pixels, before normalisation, a fresh draw per image and pass, drawn
  and added in float32 whatever the image dtype (``noise.add_channel_noise``); ``noise_sd`` is in pixel units (a
  float, or one value per channel). The reference adds ``noise_sd`` to *normalised* inputs: its ``noise_sd = s`` is
  ``s * std_c`` here for channel c (CIFAR-10 std (0.2470, 0.2435, 0.2616)), which the per-channel form expresses
  exactly. On in training and in inference.
* weight noise (``weight_noise`` = ``pni`` | ``cpni`` | ``none``): one draw per layer per pass, shared by the
  batch (see ``noise_layers``). As in the reference CPNI network, the linear head always uses PNI noise when
  the convolutions are noisy.
* optional PNI activation noise after each convolution (``act_noise``).

``make_stochastic_apply_fn(model)`` gives the inference contract of stochastic models,
``apply_fn(variables, images, key, input_noise=True) -> logits``, a pure function of its arguments
(``models.contract``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from smoothjax.models.contract import is_stochastic
from smoothjax.models.layers import Normalize, fusion_barrier
from smoothjax.models.noise_layers import NOISE_RNG, WEIGHT_NOISES, NoisyConv, NoisyDense
from smoothjax.models.resnet import _BatchNorm
from smoothjax.noise import add_channel_noise


class NoisyBasicBlock(nn.Module):
    """BasicBlock of noisy convolutions (two 3x3 + a 1x1 shortcut when the shape changes)."""

    features: int
    strides: int
    conv_kwargs: dict
    barrier: bool | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        norm = lambda: _BatchNorm(use_running_average=not train, dtype=self.dtype)  # noqa: E731
        y = NoisyConv(self.features, 3, self.strides, 1, dtype=self.dtype, **self.conv_kwargs)(x)
        y = nn.relu(norm()(y))
        y = norm()(NoisyConv(self.features, 3, 1, 1, dtype=self.dtype, **self.conv_kwargs)(y))
        if self.strides != 1 or x.shape[-1] != self.features:
            x = norm()(NoisyConv(self.features, 1, self.strides, 0, dtype=self.dtype, **self.conv_kwargs)(x))
        return fusion_barrier(nn.relu(x + y), self.barrier)


class NoisyCifarResNet(nn.Module):
    """Stochastic CIFAR ResNet of depth 6n+2 (SIAM's ResNet-20/32/44/56 with a ``width`` multiplier).

    Input (B, H, W, C) in [0, 1]; output (B, num_classes) float32 logits. ``__call__(x, train=False,
    input_noise=True)``; needs ``rngs={"noise": key}`` when any noise is on (``make_stochastic_apply_fn``).
    """

    depth: int
    num_classes: int
    mean: Sequence[float]
    std: Sequence[float] | None
    width: int = 1
    noise_sd: float | Sequence[float] = 0.0
    weight_noise: str = "pni"
    granularity: str = "element"
    noise_rank: int = 5
    act_noise: bool = False
    barrier: bool | None = None
    dtype: Any = jnp.float32

    stochastic = True  # Class attribute read by ``is_stochastic``.

    @nn.compact
    def __call__(self, x, train: bool = False, input_noise: bool = True):
        if (self.depth - 2) % 6 != 0 or self.depth < 8:
            raise ValueError(f"depth={self.depth} is not allowed; a CIFAR ResNet has depth 6n+2 (20, 32, 44, 56, 110)")
        if self.weight_noise not in WEIGHT_NOISES:
            raise ValueError(f"unknown weight_noise {self.weight_noise!r}; choose one of: {', '.join(WEIGHT_NOISES)}")
        sd = np.asarray(self.noise_sd, np.float32)  # A static field: checked with NumPy, also under jit.
        if sd.ndim > 1 or (sd.ndim == 1 and sd.shape[0] != x.shape[-1]) or not np.all(sd >= 0) \
                or not np.all(np.isfinite(sd)):
            raise ValueError(f"noise_sd={self.noise_sd!r} is not allowed; it must be a float >= 0 or one per channel")
        if input_noise and np.any(sd > 0):
            if not self.has_rng(NOISE_RNG) and not self.is_initializing():
                raise ValueError(f"input noise needs rngs={{'{NOISE_RNG}': key}}; use make_stochastic_apply_fn")
            if self.has_rng(NOISE_RNG):
                x = add_channel_noise(self.make_rng(NOISE_RNG), x, sd)  # float32, whatever x's dtype
        conv_kwargs = dict(weight_noise=self.weight_noise, granularity=self.granularity, noise_rank=self.noise_rank,
                           act_noise=self.act_noise)
        blocks = (self.depth - 2) // 6
        x = Normalize(self.mean, self.std)(x)
        x = NoisyConv(16 * self.width, 3, 1, 1, dtype=self.dtype, **conv_kwargs)(x)
        x = nn.relu(_BatchNorm(use_running_average=not train, dtype=self.dtype)(x))
        for stage, features in enumerate((16, 32, 64)):
            for block in range(blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = NoisyBasicBlock(features * self.width, strides, conv_kwargs, self.barrier, self.dtype)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        head_noise = "none" if self.weight_noise == "none" else "pni"
        x = NoisyDense(self.num_classes, head_noise, self.granularity, dtype=self.dtype)(x)
        return x.astype(jnp.float32)


def make_stochastic_apply_fn(model: nn.Module, *, train: bool = False) -> Callable:
    """Returns ``apply_fn(variables, images, key, input_noise=True) -> logits`` (one stochastic pass).

    ``images`` (B, H, W, C) in [0, 1]; result (B, num_classes) float32. All noise comes from ``key`` (one weight
    draw per layer shared by the batch, input noise per image); ``input_noise=False`` switches the input noise
    off (the single-pass model an EOT attacker differentiates). Inference mode (batch-norm running statistics,
    nothing mutated); a deterministic model ignores ``key`` and ``input_noise``, so every model fits this
    contract. The function's ``stochastic`` attribute says whether the model draws noise (``contract.is_stochastic``:
    False for a deterministic model, so averaging its passes raises). ``train`` must stay False (training passes go
    through ``training.apply_train_mode``).
    """
    if train:
        raise ValueError("train=True is not allowed; training passes use training.apply_train_mode(rngs=...)")
    stochastic = is_stochastic(model)

    def apply_fn(variables, images, key, input_noise: bool = True):
        if not stochastic:
            return model.apply(variables, images, train=False)
        return model.apply(variables, images, train=False, input_noise=input_noise, rngs={NOISE_RNG: key})

    apply_fn.stochastic = stochastic
    return apply_fn
