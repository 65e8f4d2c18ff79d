"""Models: parameter counts of the published architectures, normalisation inside the model, the apply_fn
contract, the CPU fusion barrier's exactness, and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smoothjax.models import CifarResNet, count_params, get_model, make_apply_fn

C10 = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010))


def _abstract_variables(model, shape):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))


@pytest.mark.parametrize("name,classes,shape,expected", [
    # Independent counts: He et al. CIFAR ResNets with 1x1 conv + BN shortcuts (Cohen's cifar_resnet110 has
    # 1,730,714 parameters for 10 classes); torchvision's resnet50 has 25,557,032.
    ("cifar_resnet110", 10, (1, 32, 32, 3), 1_730_714),
    ("cifar_resnet20", 10, (1, 32, 32, 3), 272_474),
    ("resnet50", 1000, (1, 224, 224, 3), 25_557_032),
])
def test_parameter_counts(name, classes, shape, expected):
    model = get_model(name, classes, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert count_params(_abstract_variables(model, shape)) == expected


def test_cifar_resnet_depths_and_width():
    # Depth 6n+2: n BasicBlocks per stage, 2 convs each, + stem + head = depth weighted layers.
    for depth in (20, 32, 44, 56, 110):
        variables = _abstract_variables(get_model(f"cifar_resnet{depth}", 10, **C10), (1, 32, 32, 3))
        kernels = [x for x in jax.tree.leaves(variables["params"]) if x.ndim == 4 and x.shape[0] == 3]
        assert len(kernels) + 1 == depth  # every 3x3 conv plus the final dense layer
    wide = _abstract_variables(get_model("cifar_resnet20", 10, width=2, **C10), (1, 32, 32, 3))
    head = wide["params"]["Dense_0"]["kernel"]
    assert head.shape == (128, 10)


def test_normalisation_is_the_first_layer():
    # With mean m and std s, feeding m + s*z must equal a "none"-normalised model fed z (same params).
    mean, std = (0.2, 0.4, 0.6), (0.5, 0.25, 2.0)
    normed = get_model("cifar_resnet20", 10, mean=mean, std=std, barrier=False)
    plain = get_model("cifar_resnet20", 10, normalization="none", mean=mean, barrier=False)
    z = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = normed.init(jax.random.key(0), z)
    x = jnp.asarray(mean) + jnp.asarray(std) * z
    np.testing.assert_allclose(normed.apply(variables, x), plain.apply(variables, z), rtol=1e-4, atol=1e-4)
    centered = get_model("cifar_resnet20", 10, normalization="mean", mean=mean, barrier=False)
    np.testing.assert_allclose(centered.apply(variables, x), plain.apply(variables, x - jnp.asarray(mean)),
                               rtol=1e-5, atol=1e-5)


def test_apply_fn_contract_and_dataset_stats():
    model = get_model("small_cnn", 10)  # digits statistics by default
    x = jax.random.uniform(jax.random.key(0), (5, 8, 8, 1))
    variables = model.init(jax.random.key(0), x)
    apply_fn = make_apply_fn(model)
    logits = jax.jit(apply_fn)(variables, x)
    assert logits.shape == (5, 10) and logits.dtype == jnp.float32
    # Inference mode mutates nothing and is deterministic.
    np.testing.assert_array_equal(logits, apply_fn(variables, x))


def test_fusion_barrier_is_bit_exact_in_values_and_gradients():
    kw = dict(depth=8, num_classes=10, **C10)
    on, off = CifarResNet(barrier=True, **kw), CifarResNet(barrier=False, **kw)
    x = jax.random.uniform(jax.random.key(0), (4, 16, 16, 3))
    variables = on.init(jax.random.key(1), x)

    def loss(model):
        def f(params):
            logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
            return jnp.sum(jax.nn.log_softmax(logits)[:, 0])
        return jax.jit(jax.value_and_grad(f))(variables["params"])

    (v1, g1), (v2, g2) = loss(on), loss(off)
    assert v1 == v2
    jax.tree.map(np.testing.assert_array_equal, g1, g2)


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="resnet18", num_classes=10), "unknown model 'resnet18'; choose one of: cifar_resnet110"),
    (dict(name="small_cnn", num_classes=1), "num_classes=1"),
    (dict(name="small_cnn", num_classes=10, normalization="zscore"), "unknown normalization 'zscore'"),
    (dict(name="small_cnn", num_classes=10, dataset="mnist"), "no normalisation statistics for dataset 'mnist'"),
])
def test_bad_arguments_give_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        get_model(**kwargs)
    assert "\n" not in str(e.value)
