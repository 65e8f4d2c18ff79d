"""The custom-VJP convolution of ``smoothjax.models.cpu_conv`` (XLA:CPU fix B2): input and weight gradients against
NumPy re-derivations, bit-identical to plain autodiff where not split, the ResNets' gradients against float64, loops,
forward-mode errors, fallbacks and the backend gate."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from smoothjax.models import cpu_conv, get_model
from smoothjax.models.resnet import CifarResNet

DN = ("NHWC", "HWIO", "NHWC")
C10 = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010))
# (input size, kernel size, stride, padding): the ResNets' 3x3 / 1x1 / 7x7 cases, odd sizes, asymmetric and SAME.
CASES = [(8, 3, 1, ((1, 1), (1, 1))), (8, 3, 2, ((1, 1), (1, 1))), (9, 3, 2, ((1, 1), (1, 1))),
         (8, 1, 2, ((0, 0), (0, 0))), (11, 7, 2, ((3, 3), (3, 3))), (7, 3, 3, ((0, 2), (1, 0))), (9, 4, 2, "SAME")]


def numpy_input_gradient(g, w, h, stride, pads):
    """dL/dx of y[n, a, b, o] = sum_{i,j,c} xpad[n, a*s + i, b*s + j, c] w[i, j, c, o], scattered term by term."""
    n, ho, wo, _ = g.shape
    k0, k1, cin, _ = w.shape
    dx = np.zeros((n, h + pads[0][0] + pads[0][1] + k0, h + pads[1][0] + pads[1][1] + k1, cin))
    for a, b, i, j in itertools.product(range(ho), range(wo), range(k0), range(k1)):
        dx[:, a * stride + i, b * stride + j, :] += g[:, a, b, :] @ w[i, j].T
    return dx[:, pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + h, :]


@pytest.mark.parametrize("h,k,stride,padding", CASES)
def test_gradients_match_numpy(h, k, stride, padding):
    rng = np.random.default_rng(h * 100 + k * 10 + stride)
    x = rng.standard_normal((2, h, h, 3)).astype(np.float32)
    w = rng.standard_normal((k, k, 3, 5)).astype(np.float32)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, DN)
    y, vjp = jax.vjp(lambda x, w: cpu_conv.conv_general_dilated(x, w, (stride, stride), padding,
                                                                dimension_numbers=dn), x, w)
    y_ref, vjp_ref = jax.vjp(lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), padding,
                                                                   dimension_numbers=dn), x, w)
    np.testing.assert_array_equal(y, y_ref)
    g = rng.standard_normal(y.shape).astype(np.float32)
    (dx, dw), (_, dw_ref) = vjp(g), vjp_ref(g)
    pads = lax.padtype_to_pads((h, h), (k, k), (stride, stride), padding) if isinstance(padding, str) else padding
    expected = numpy_input_gradient(g.astype(np.float64), w.astype(np.float64), h, stride, pads)
    np.testing.assert_allclose(dx, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    if stride > 1:  # Not split over the batch: XLA's own weight gradient, bit for bit.
        np.testing.assert_array_equal(dw, dw_ref)
    expected_w = numpy_weight_gradient(x.astype(np.float64), g.astype(np.float64), k, stride, pads)
    np.testing.assert_allclose(dw, expected_w, rtol=1e-5, atol=1e-5 * np.abs(expected_w).max())


def numpy_weight_gradient(x, g, k, stride, pads):
    """dL/dw of the same convolution, tap by tap, in float64: (k, k, I, O)."""
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    ho, wo = g.shape[1:3]
    return np.stack([[np.einsum("nhwi,nhwo->io", xp[:, i:i + (ho - 1) * stride + 1:stride,
                                                   j:j + (wo - 1) * stride + 1:stride], g) for j in range(k)]
                     for i in range(k)])


def test_weight_gradient_split_over_the_batch_only_where_measured_faster():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)
    for shape, stride, split in [((4, 16, 16, 2), 1, True), ((4, 32, 32, 2), 1, False), ((3, 8, 8, 2), 1, False),
                                 ((4, 16, 16, 2), 2, False)]:
        x = rng.standard_normal(shape).astype(np.float32)
        pad = ((1, 1), (1, 1))
        y, vjp = jax.vjp(lambda w: lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=DN), w)
        g = rng.standard_normal(y.shape).astype(np.float32)
        half = shape[0] // 2
        halves = sum(jax.vjp(lambda w: lax.conv_general_dilated(x[s], w, (stride, stride), pad, dimension_numbers=DN),
                             w)[1](g[s])[0] for s in (slice(0, half), slice(half, None)))
        dw = cpu_conv.weight_gradient(jnp.asarray(x), jnp.asarray(g), jnp.asarray(w), (stride, stride), pad)
        np.testing.assert_array_equal(dw, halves if split else vjp(g)[0])


def test_input_gradient_padding_leaves_no_row_out():
    # Stride 3 over 7 rows with padding (0, 2): outputs at rows 0, 3, 6 (window 3); rows 0-8 of the padded input are
    # read, so every input row gets a gradient; the formula's right padding is negative-safe.
    assert cpu_conv._input_grad_padding(7, 3, 3, (0, 2)) == (2, 0)
    assert cpu_conv._input_grad_padding(32, 3, 2, (1, 1)) == (1, 2)
    assert cpu_conv._input_grad_padding(32, 1, 2, (0, 0)) == (0, 1)


def _resnet_grads(conv, dtype):
    model = CifarResNet(depth=8, num_classes=10, conv=conv, dtype=dtype, **C10)
    x = jax.random.uniform(jax.random.key(0), (4, 16, 16, 3), dtype)
    variables = jax.jit(model.init)(jax.random.key(1), x.astype(jnp.float32))
    params = jax.tree.map(lambda p: p.astype(dtype), variables["params"])
    stats = jax.tree.map(lambda p: p.astype(dtype), variables["batch_stats"])

    def f(params, x):
        logits, _ = model.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(jax.nn.log_softmax(logits)[:, 0])

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(params, x)


def _rel(a, b):
    a, b = np.concatenate([np.ravel(v) for v in jax.tree.leaves(a)]), np.concatenate(
        [np.ravel(v) for v in jax.tree.leaves(b)])
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_resnet_gradients_equal_plain_autodiff_and_float64():
    jax.config.update("jax_enable_x64", True)
    try:
        (v64, g64) = _resnet_grads("xla", jnp.float64)
        (v_fix, g_fix), (v_xla, g_xla) = _resnet_grads("cpu_vjp", jnp.float32), _resnet_grads("xla", jnp.float32)
        (v_fix64, g_fix64) = _resnet_grads("cpu_vjp", jnp.float64)
    finally:
        jax.config.update("jax_enable_x64", False)
    assert v_fix == v_xla  # Forward values are the plain convolution's.
    np.testing.assert_allclose(v_fix64, v64, rtol=1e-13)
    assert _rel(g_fix64, g64) < 1e-11  # The same gradient in exact-enough arithmetic.
    # float32: the fix is no further from float64 than plain autodiff (this network amplifies rounding).
    assert _rel(g_fix, g64) < max(2 * _rel(g_xla, g64), 1e-5)


def test_gradient_inside_a_loop_equals_the_unrolled_gradient():
    model = get_model("cifar_resnet8", 10, conv="cpu_vjp")
    x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
    variables = model.init(jax.random.key(1), x)

    def grad_x(x):
        return jax.grad(lambda x: jnp.sum(model.apply(variables, x)[:, 0]))(x)

    def looped(x):
        return lax.fori_loop(0, 2, lambda _, x: x + 0.1 * grad_x(x), x)

    np.testing.assert_allclose(jax.jit(looped)(x), x + 0.1 * grad_x(x) + 0.1 * grad_x(x + 0.1 * grad_x(x)),
                               rtol=1e-5, atol=1e-6)


def test_forward_mode_fails_clearly_and_works_with_plain_convolutions():
    x = jnp.ones((1, 6, 6, 2))
    w = jnp.ones((3, 3, 2, 4))
    dn = lax.conv_dimension_numbers(x.shape, w.shape, DN)
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jvp(lambda x: cpu_conv.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn),
                (x,), (x,))
    model = get_model("cifar_resnet8", 10, conv="xla")
    variables = model.init(jax.random.key(0), x[..., :1].repeat(3, -1))
    jac = jax.jacfwd(lambda x: model.apply(variables, x))(x[..., :1].repeat(3, -1))
    assert jac.shape == (1, 10, 1, 6, 6, 3) and np.isfinite(jac).all()


def test_other_convolutions_fall_back_to_lax_and_keep_forward_mode():
    x = jnp.ones((1, 6, 6, 4))
    w = jnp.ones((3, 3, 2, 4))
    dn = lax.conv_dimension_numbers(x.shape, w.shape, DN)
    f = lambda x: cpu_conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn, feature_group_count=2)
    _, tangent = jax.jvp(f, (x,), (x,))  # Grouped: plain lax, so forward mode works.
    np.testing.assert_array_equal(tangent, lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn,
                                                                    feature_group_count=2))
    g = lambda x: cpu_conv.conv_general_dilated(x, w[:, :, :, :4].repeat(2, 2), (1, 1), "SAME", rhs_dilation=(2, 2),
                                                dimension_numbers=dn)
    jax.jvp(g, (x,), (x,))  # Dilated: plain lax.


def test_backend_gate_parameters_and_errors():
    assert cpu_conv.select(None) is (cpu_conv.conv_general_dilated if jax.default_backend() == "cpu"
                                     else lax.conv_general_dilated)
    assert cpu_conv.select("xla") is lax.conv_general_dilated
    x = jnp.zeros((1, 8, 8, 3))
    a = get_model("cifar_resnet8", 10, conv="xla").init(jax.random.key(0), x)
    b = get_model("cifar_resnet8", 10, conv="cpu_vjp").init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, a, b)  # Same parameter tree: checkpoints are interchangeable.
    with pytest.raises(ValueError, match="conv='onednn' is not allowed; choose one of: xla, cpu_vjp") as e:
        cpu_conv.select("onednn")
    assert "\n" not in str(e.value)
