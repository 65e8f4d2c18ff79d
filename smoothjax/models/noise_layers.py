"""Noise-injection layers of SIAM (Nemcovsky et al.): PNI and CPNI weight noise, PNI activation noise.

* PNI (parametric noise injection, He et al. 2019): ``W~ = W + alpha * eps`` with ``eps ~ N(0, std(W)^2)``
  drawn afresh on every forward pass; ``alpha`` is learnable, initialised to 0.25, and element-wise (one per
  weight), channel-wise (one per output channel) or layer-wise (a scalar).
* CPNI ("colored" PNI): one draw from a low-rank-plus-diagonal Gaussian per weight tensor,
  ``noise = sqrt(|std(W) * d|) * z_d + F z_f`` with ``z_d ~ N(0, I_size)``, ``z_f ~ N(0, I_rank)``; its covariance
  is ``diag(|std(W) d|) + F F^T``. ``d`` is initialised to 0.0625 (= 0.25^2) and ``F`` (size x rank) to 0.01.

As in the reference, ONE weight-noise draw per layer is shared by every image of a forward pass (the batch sees
the same perturbed network); a new pass (new key) draws new noise. Activation noise is drawn per element, i.e.
independently for every image. ``std(W)`` is the unbiased (ddof=1) standard deviation of all entries, as
``torch.std``; for PNI it is treated as a constant in the gradient (``torch.normal`` does not differentiate
through its std), for CPNI gradients flow through it (the reference multiplies it into the diagonal).

Randomness comes only from the Flax rng stream ``"noise"``: a forward pass is a pure function of
(variables, key, images). Layers called without that stream (and not initialising) raise ValueError.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from smoothjax.models import cpu_conv

WEIGHT_NOISES = ("none", "pni", "cpni")
GRANULARITIES = ("element", "channel", "layer")
NOISE_RNG = "noise"
_he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def pni_weight_noise(key: jax.Array, w: jax.Array, alpha: jax.Array) -> jax.Array:
    """PNI noise for weight tensor ``w``: ``alpha * std(w) * z``, ``z ~ N(0, I)`` of ``w.shape``.

    ``alpha`` broadcasts against ``w`` (same shape, (out_channels,) or scalar). Each entry has standard
    deviation ``|alpha| * std(w)`` (ddof=1, held constant in the gradient).
    """
    std = jax.lax.stop_gradient(jnp.std(w, ddof=1))
    return alpha * std * jax.random.normal(key, w.shape, w.dtype)


def cpni_weight_noise(key: jax.Array, w: jax.Array, diag: jax.Array, factor: jax.Array) -> jax.Array:
    """CPNI noise for ``w``: ``sqrt(|std(w) * diag|) * z_d + factor @ z_f`` reshaped to ``w.shape``.

    ``diag`` has shape (w.size,), ``factor`` (w.size, rank) (rank 0 allowed). The flattened noise is Gaussian with
    mean 0 and covariance ``diag(|std(w) * diag|) + factor @ factor.T``.
    """
    kd, kf = jax.random.split(key)
    size = w.size
    noise = jnp.sqrt(jnp.abs(jnp.std(w, ddof=1) * diag)) * jax.random.normal(kd, (size,), w.dtype)
    if factor.shape[-1] > 0:
        noise = noise + factor @ jax.random.normal(kf, (factor.shape[-1],), w.dtype)
    return noise.reshape(w.shape)


def _alpha_shape(granularity: str, shape: Sequence[int]) -> tuple:
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown noise granularity {granularity!r}; choose one of: {', '.join(GRANULARITIES)}")
    return {"element": tuple(shape), "channel": (shape[-1],), "layer": ()}[granularity]


def _noise_key(module: nn.Module) -> jax.Array | None:
    """A fresh key from the ``noise`` stream; None while initialising without one; ValueError otherwise."""
    if module.has_rng(NOISE_RNG):
        return module.make_rng(NOISE_RNG)
    if module.is_initializing():
        return None
    raise ValueError(f"{type(module).__name__} is stochastic and needs rngs={{'{NOISE_RNG}': key}}; call it through "
                     "smoothjax.models.make_stochastic_apply_fn")


class NoisyWeight(nn.Module):
    """Returns ``W + noise`` for a weight ``w`` (weight_noise ``pni``, ``cpni`` or ``none``), holding the noise
    parameters: ``alpha`` (PNI, shape per ``granularity``, init 0.25) or ``noise_d`` (w.size,) init 0.0625 and
    ``noise_factor`` (w.size, rank) init 0.01 (CPNI)."""

    weight_noise: str = "pni"
    granularity: str = "element"
    noise_rank: int = 5

    @nn.compact
    def __call__(self, w):
        if self.weight_noise == "none":
            return w
        if self.weight_noise == "pni":
            alpha = self.param("alpha", nn.initializers.constant(0.25), _alpha_shape(self.granularity, w.shape))
            key = _noise_key(self)
            return w if key is None else w + pni_weight_noise(key, w, alpha)
        if self.weight_noise == "cpni":
            if self.noise_rank < 0:
                raise ValueError(f"noise_rank={self.noise_rank} is not allowed; it must be >= 0")
            diag = self.param("noise_d", nn.initializers.constant(0.0625), (w.size,))
            factor = self.param("noise_factor", nn.initializers.constant(0.01), (w.size, self.noise_rank))
            key = _noise_key(self)
            return w if key is None else w + cpni_weight_noise(key, w, diag, factor)
        raise ValueError(f"unknown weight_noise {self.weight_noise!r}; choose one of: {', '.join(WEIGHT_NOISES)}")


class ActivationNoise(nn.Module):
    """PNI activation noise: ``h + alpha * std(h) * z`` with ``z`` drawn per element (per image); ``alpha``
    learnable, init 0.25, element-wise over (H, W, C), channel-wise or a scalar; std(h) over the whole batch."""

    granularity: str = "element"

    @nn.compact
    def __call__(self, h):
        alpha = self.param("act_alpha", nn.initializers.constant(0.25), _alpha_shape(self.granularity, h.shape[1:]))
        key = _noise_key(self)
        if key is None:
            return h
        std = jax.lax.stop_gradient(jnp.std(h, ddof=1))
        return h + alpha * std * jax.random.normal(key, h.shape, h.dtype)


class NoisyConv(nn.Module):
    """Bias-free 2-D convolution (NHWC, HWIO kernel, He-normal fan-out init) with weight noise and optional
    activation noise on its output. Shapes as ``nn.Conv(features, (k, k), strides, padding=padding)``. ``conv``:
    the convolution (``cpu_conv.select``; None = the custom-VJP one on CPU, whose gradients in loop bodies and
    ``lax.map`` over passes avoid XLA:CPU's slow path; plain XLA elsewhere)."""

    features: int
    kernel_size: int = 3
    strides: int = 1
    padding: int = 1
    weight_noise: str = "pni"
    granularity: str = "element"
    noise_rank: int = 5
    act_noise: bool = False
    dtype: Any = jnp.float32
    conv: str | None = None

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", _he_normal, (k, k, x.shape[-1], self.features), jnp.float32)
        kernel = NoisyWeight(self.weight_noise, self.granularity, self.noise_rank, name="noise")(kernel)
        pad = ((self.padding, self.padding),) * 2
        y = cpu_conv.select(self.conv)(x.astype(self.dtype), kernel.astype(self.dtype), (self.strides,) * 2, pad,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.act_noise:
            y = ActivationNoise(self.granularity, name="act_noise")(y)
        return y


class NoisyDense(nn.Module):
    """Linear layer ``x @ W~ + b`` with weight noise on ``W`` only (init as ``nn.Dense``: LeCun-normal kernel,
    zero bias). (B, D) -> (B, features)."""

    features: int
    weight_noise: str = "pni"
    granularity: str = "element"
    noise_rank: int = 5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        kernel = NoisyWeight(self.weight_noise, self.granularity, self.noise_rank, name="noise")(kernel)
        return x.astype(self.dtype) @ kernel.astype(self.dtype) + bias.astype(self.dtype)
