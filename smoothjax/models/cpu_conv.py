"""A 2-D convolution whose input gradient is an ordinary forward convolution (XLA:CPU loop-body fix, "fix B2").

Inside a ``lax.while_loop`` / ``lax.scan`` / ``fori_loop`` body, XLA:CPU does not canonicalize the transposed
convolutions that reverse-mode autodiff emits for the gradient with respect to a convolution's *input*: they keep a
non-canonical kernel layout and run on a slow path, ~8x slower than the same gradient outside a loop
(docs/performance.md; ``xla/service/cpu/conv_canonicalization.cc`` only walks the
entry computation). ``conv_general_dilated`` here is a drop-in for ``lax.conv_general_dilated`` (Flax's
``nn.Conv(conv_general_dilated=...)``) with a ``jax.custom_vjp`` that writes that input gradient as a *forward*
convolution of the output cotangent (kernel flipped spatially, input/output channels swapped, ``lhs_dilation`` =
stride, padding ``k - 1 - p`` on the left and the remainder on the right), which XLA handles like any forward
convolution in and out of loops (the same products and sums as JAX's transposed convolution). The weight gradient
is XLA's own, split over two half batches where that measured faster (``weight_gradient``).

Costs: forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``) through a ``custom_vjp`` is not possible; JAX
raises ``TypeError: can't apply forward-mode autodiff (jvp) to a custom_vjp function``. Build the model with
``conv="xla"`` for forward mode (nothing in smoothjax uses it). ``select(None)`` turns the custom VJP on only when
the default backend is CPU: on GPU/TPU the plain convolution is used unchanged.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
from jax import lax

CONV_CHOICES = ("xla", "cpu_vjp")
_NHWC = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))  # NHWC images, HWIO kernels.


def _input_grad_padding(size: int, k: int, stride: int, pad: tuple[int, int]) -> tuple[int, int]:
    """Padding of the forward convolution that computes the input gradient of one spatial dimension."""
    out = (size + pad[0] + pad[1] - k) // stride + 1
    return k - 1 - pad[0], size - (out - 1) * stride - 1 + pad[0]


def input_gradient(g: jax.Array, w: jax.Array, input_hw: tuple[int, int], strides, padding, precision=None):
    """Gradient of ``conv(x, w)`` with respect to x, as one forward convolution of the cotangent ``g``.

    Args:
      g: (N, Ho, Wo, O) output cotangent.
      w: (kh, kw, I, O) kernel (HWIO).
      input_hw: (H, W) of the convolution's input.
      strides: (sh, sw) window strides of the convolution.
      padding: ((top, bottom), (left, right)) explicit padding of the convolution.

    Returns:
      (N, H, W, I): the same values as ``jax.vjp(lambda x: conv(x, w), x)[1](g)`` up to float rounding (the same
      products summed in another order).
    """
    kh, kw = w.shape[:2]
    pads = [_input_grad_padding(s, k, st, p) for s, k, st, p in zip(input_hw, (kh, kw), strides, padding)]
    w_t = _flip_swap(w)
    return lax.conv_general_dilated(g, w_t, (1, 1), pads, lhs_dilation=tuple(strides), dimension_numbers=_NHWC,
                                    precision=precision)


def _flip_swap(w: jax.Array) -> jax.Array:
    """The HWIO kernel flipped in both spatial dimensions with input and output channels swapped: (kh, kw, O, I)."""
    return lax.rev(w, (0, 1)).transpose(0, 1, 3, 2)


def _plain(x, w, strides, padding, precision):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC, precision=precision)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_cpu_vjp(x: jax.Array, w: jax.Array, strides: tuple, padding: tuple, precision=None) -> jax.Array:
    """``lax.conv_general_dilated(x, w, strides, padding)`` on NHWC x and HWIO w, input gradient as a forward conv.

    Values are exactly the plain convolution's; gradients equal plain autodiff's up to float rounding.
    """
    return _plain(x, w, strides, padding, precision)


def _fwd(x, w, strides, padding, precision):
    return _plain(x, w, strides, padding, precision), (x, w)


def _bwd(strides, padding, precision, residuals, g):
    x, w = residuals
    dx = input_gradient(g, w, x.shape[1:3], strides, padding, precision)
    return dx, weight_gradient(x, g, w, strides, padding, precision)


def weight_gradient(x: jax.Array, g: jax.Array, w: jax.Array, strides, padding, precision=None) -> jax.Array:
    """Gradient of ``conv(x, w)`` with respect to the (kh, kw, I, O) kernel w, for the output cotangent g.

    XLA's own weight gradient (a convolution whose window is the whole activation), except for stride-1
    convolutions on inputs of at most 16x16 and an even batch: there it is the sum of the weight gradients of the
    two half batches, which XLA:CPU (YNN kernels, jax 0.10) runs faster (ResNet-110 train step 1.11x, ResNet-20
    1.09x, docs/performance.md; on 32x32 inputs it was slower). Equal to plain autodiff up to float rounding
    (one more addition per weight); bit-identical where not split.
    """
    def xla(x_, g_):
        return jax.vjp(lambda w_: _plain(x_, w_, strides, padding, precision), w)[1](g_)[0]

    n = x.shape[0]
    if tuple(strides) == (1, 1) and max(x.shape[1:3]) <= 16 and n % 2 == 0:
        return xla(x[:n // 2], g[:n // 2]) + xla(x[n // 2:], g[n // 2:])
    return xla(x, g)


conv_cpu_vjp.defvjp(_fwd, _bwd)


def _fast_path_ok(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
                  batch_group_count) -> bool:
    if lhs.ndim != 4 or rhs.ndim != 4 or feature_group_count != 1 or batch_group_count != 1:
        return False
    if any(d not in (None, (1, 1), [1, 1]) and tuple(d) != (1, 1) for d in (lhs_dilation, rhs_dilation)):
        return False
    if isinstance(padding, str):
        return True
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    return tuple(dn) == tuple(_NHWC)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
    """Drop-in for ``lax.conv_general_dilated`` whose input gradient is a forward convolution (``conv_cpu_vjp``).

    The custom VJP applies to 2-D NHWC/HWIO convolutions without dilation or groups (every convolution of the
    smoothjax ResNets); anything else is passed to ``lax.conv_general_dilated`` unchanged. Same shapes, dtypes and
    forward values as ``lax.conv_general_dilated``.
    """
    if preferred_element_type is not None or dimension_numbers is None or not _fast_path_ok(
            lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
            batch_group_count):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count, precision,
                                        preferred_element_type)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return conv_cpu_vjp(lhs, rhs, tuple(int(s) for s in window_strides), padding, precision)


def select(conv: str | None = None) -> Callable:
    """The convolution function for ``nn.Conv(conv_general_dilated=...)``.

    Args:
      conv: ``"xla"`` (``lax.conv_general_dilated``, plain autodiff), ``"cpu_vjp"`` (this module's
        ``conv_general_dilated``), or None: ``"cpu_vjp"`` when ``jax.default_backend() == "cpu"``, else ``"xla"``.

    Returns:
      A function with the signature of ``lax.conv_general_dilated``.
    """
    if conv is None:
        conv = "cpu_vjp" if jax.default_backend() == "cpu" else "xla"
    if conv not in CONV_CHOICES:
        raise ValueError(f"conv={conv!r} is not allowed; choose one of: {', '.join(CONV_CHOICES)}, or None (automatic)")
    return conv_general_dilated if conv == "cpu_vjp" else lax.conv_general_dilated
