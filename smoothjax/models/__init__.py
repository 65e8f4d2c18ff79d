"""Model zoo: Flax Linen classifiers looked up by name, and the ``apply_fn`` contract.

Every model takes NHWC images in [0, 1] and normalises them in its own first layer, so noise and attack budgets
are in pixel units. ``get_model(name, num_classes, **kw)`` builds one; ``make_apply_fn(model)`` gives the
inference-mode function ``apply_fn(variables, images) -> logits`` that certification, attack and SIAM code call;
stochastic models add the key as a third argument, ``apply_fn(variables, images, key)``
(``make_stochastic_apply_fn``; the convention is ``models.contract``, docs/api.md).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from smoothjax.models.layers import Normalize, fusion_barrier
from smoothjax.models.contract import is_stochastic, takes_key, with_key
from smoothjax.models.noisy_resnet import NoisyCifarResNet, make_stochastic_apply_fn
from smoothjax.models.resnet import CifarResNet, ResNet50
from smoothjax.models.small_cnn import SmallCNN

NORMALIZATIONS = ("mean_std", "mean", "none")
DTYPES = ("float32", "bfloat16", "float16")  # compute dtypes; parameters and batch-norm statistics stay float32

_BUILDERS = {
    **{f"cifar_resnet{d}": partial(CifarResNet, depth=d) for d in (8, 20, 32, 44, 56, 110)},
    "resnet50": ResNet50,
    "small_cnn": SmallCNN,
    # SIAM's stochastic ResNets (models/noisy_resnet.py): input noise only, + PNI or + CPNI weight noise.
    **{f"cifar_resnet{d}_{kind}": partial(NoisyCifarResNet, depth=d, weight_noise=noise)
       for d in (8, 20, 32, 44, 56, 110) for kind, noise in (("gauss", "none"), ("pni", "pni"), ("cpni", "cpni"))},
}
MODEL_NAMES = tuple(sorted(_BUILDERS))

# Per-channel statistics (pixel units in [0, 1]) used when no explicit mean/std is given.
_DEFAULT_DATASET = {"resnet50": "imagenet", "small_cnn": "digits"}


def _dataset_stats(dataset: str):
    from smoothjax.data import DATASET_STATS  # Imported lazily: the data package pulls in optional readers.

    if dataset not in DATASET_STATS:
        raise ValueError(f"no normalisation statistics for dataset {dataset!r}; choose one of: "
                         f"{', '.join(sorted(DATASET_STATS))}, or pass mean= and std=")
    return DATASET_STATS[dataset]


def get_model(name: str, num_classes: int, *, dataset: str | None = None, normalization: str = "mean_std",
              mean=None, std=None, **kwargs) -> nn.Module:
    """Builds the model called ``name`` (one of ``MODEL_NAMES``) with a ``num_classes``-way linear head.

    Args:
      name: ``cifar_resnet8/20/32/44/56/110``, ``resnet50``, ``small_cnn``, or SIAM's stochastic
        ``cifar_resnet{depth}_gauss`` / ``_pni`` / ``_cpni`` (``noise_sd``, ``granularity``, ``noise_rank``,
        ``act_noise`` kwargs; call them through ``make_stochastic_apply_fn``).
      num_classes: number of output logits, >= 2.
      dataset: whose per-channel mean/std the first layer uses (default: cifar10 for CIFAR ResNets,
        imagenet for resnet50, digits for small_cnn).
      normalization: ``mean_std`` ((x - mean) / std), ``mean`` (x - mean, SmoothAdv's InputCenterLayer) or
        ``none``.
      mean, std: explicit per-channel statistics in pixel units; override ``dataset``.
      **kwargs: model fields, e.g. ``width`` (CIFAR ResNets, small_cnn), ``stage_sizes`` and ``base_width``
        (resnet50), ``barrier`` (None = automatic XLA:CPU fusion barrier, see ``layers.fusion_barrier``),
        ``conv`` (deterministic ResNets: None = the custom-VJP convolution on CPU, ``"xla"`` = plain autodiff,
        which forward-mode ``jax.jvp`` / ``jax.jacfwd`` need; see ``cpu_conv.select``), ``dtype`` (the compute dtype,
        a name from ``DTYPES`` or a dtype; logits are float32 whatever it is) and ``param_dtype``.

    Returns:
      An unbound Flax module; ``module(images, train=False) -> (B, num_classes) logits``.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} is not allowed; it must be an integer >= 2")
    if "dtype" in kwargs:
        kwargs["dtype"] = compute_dtype(kwargs["dtype"])
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; choose one of: {', '.join(NORMALIZATIONS)}")
    if mean is None or (std is None and normalization == "mean_std"):
        ds_mean, ds_std = _dataset_stats(dataset or _DEFAULT_DATASET.get(name, "cifar10"))
        mean = ds_mean if mean is None else mean
        std = ds_std if std is None else std
    if normalization == "none":
        mean, std = (0.0,) * len(mean), None
    elif normalization == "mean":
        std = None
    return _BUILDERS[name](num_classes=int(num_classes), mean=tuple(mean), std=None if std is None else tuple(std),
                           **kwargs)


def compute_dtype(dtype) -> jnp.dtype:
    """``jnp.dtype(dtype)`` for a name in ``DTYPES`` (or such a dtype); a one-line ValueError otherwise."""
    name = getattr(jnp.dtype(dtype), "name", None) if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not allowed; choose one of: {', '.join(DTYPES)}")
    return jnp.dtype(name)


def with_compute_dtype(model: nn.Module, dtype) -> nn.Module:
    """``model`` computing in ``dtype`` (same variables): what ``config.dtype`` does to a trained model."""
    dtype = compute_dtype(dtype)
    if not hasattr(model, "dtype"):
        raise ValueError(f"dtype={dtype.name!r} is not allowed for {type(model).__name__}, which has no dtype field")
    return model if jnp.dtype(model.dtype) == dtype else model.clone(dtype=dtype)


def make_apply_fn(model: nn.Module) -> Callable[[dict, jax.Array], jax.Array]:
    """Returns ``apply_fn(variables, images) -> logits`` for ``model`` in inference mode.

    ``variables`` is the Flax variables dict (``{"params": ..., "batch_stats": ...}``); ``images`` is
    (B, H, W, C) float in [0, 1]; the result is (B, num_classes) float32 logits. The function is pure and
    jittable: batch norm uses its running statistics and nothing is mutated.
    """

    def apply_fn(variables, images):
        return model.apply(variables, images, train=False)

    return apply_fn


def count_params(variables) -> int:
    """Number of scalars in ``variables["params"]`` (batch-norm running statistics are not parameters)."""
    return sum(int(x.size) for x in jax.tree.leaves(variables["params"]))


__all__ = ["DTYPES", "MODEL_NAMES", "NORMALIZATIONS", "CifarResNet", "NoisyCifarResNet", "Normalize", "ResNet50",
           "SmallCNN",
           "compute_dtype", "count_params", "fusion_barrier", "get_model", "is_stochastic", "make_apply_fn",
           "make_stochastic_apply_fn", "takes_key", "with_compute_dtype", "with_key"]
