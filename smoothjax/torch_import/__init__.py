"""Imports published PyTorch checkpoints (Cohen et al., SmoothAdv, SIAM, torchvision ResNet-50) as smoothjax models.

  model, variables = smoothjax.torch_import.load("models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar")
  python -m smoothjax.torch_import IN.pth.tar --workdir runs/NAME [--arch ...] [--sigma ...]

The file is read without PyTorch and without running its pickle (``unpickler``); the network is
recognised from its keys (``layouts``), its input normalisation read from the checkpoint or inferred from its
first layer (``normalization``), and every tensor is checked against the smoothjax model before the variables are
returned. The result's logits equal PyTorch's (same images in [0, 1], NHWC instead of NCHW) to float32 rounding.

The first layer matters and a state_dict does not always say what it was: Cohen et al. and SmoothAdv keep it in
the model (mean/std and centering, CIFAR statistics 0.4914, 0.4822, 0.4465 / 0.2023, 0.1994, 0.2010), SIAM in its
data pipeline (0.491, 0.482, 0.447 / 0.247, 0.243, 0.262), torchvision-style ResNet-50s expect the ImageNet
statistics. ``preset=`` (``--preset``) names the source, ``mean=``/``std=`` give statistics outright; without them
the preset is chosen from the layout where that is unambiguous, and every choice is printed. Check an import the
way its authors measured the model: the base classifier's clean accuracy on the lossless test set
(``--check_data=cifar10-test.npz``, ``clean_accuracy``) should match the published figure to a few tenths of a
point; a wrong first layer typically costs one point or more (a SIAM ResNet-20 published at 91.31 % scored 90.16 %
behind Cohen's statistics).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from smoothjax.torch_import import layouts, normalization as norm
from smoothjax.torch_import.unpickler import UnsafeCheckpointError, load_checkpoint


@dataclass
class ImportedCheckpoint:
    """An imported checkpoint: the Flax ``model``, its ``variables`` ({"params", "batch_stats"}, float32 NumPy),
    ``spec`` (the ``model.json`` keys of ``smoothjax.checkpointing`` plus ``sigma`` and ``source``) and ``notes``
    (one sentence per inference made: architecture, classes, normalisation, sigma)."""

    model: object
    variables: dict
    spec: dict
    notes: list = field(default_factory=list)


def sigma_from_path(path) -> float | None:
    """The noise level in a path written the way the published models are laid out (``.../noise_0.25/...``)."""
    found = re.findall(r"noise_(\d+(?:\.\d+)?)", str(path))
    return float(found[-1]) if found else None


def _find_state_dict(obj, path) -> tuple[dict, dict]:
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict with a state_dict")
    for key in ("state_dict", "model_state_dict", "model", "net"):
        if isinstance(obj.get(key), dict):
            return obj[key], obj
    if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        return obj, {}
    raise ValueError(f"{path} holds no state_dict (top-level keys: {', '.join(map(str, list(obj)[:8]))})")


# A bare network (no normalisation layer in the state_dict) is how these sources release models of each family;
# Cohen et al. and SmoothAdv always save Sequential(normalisation, network).
_BARE_SOURCE = {"cifar10": "siam", "imagenet": "torchvision"}


def _data_stats(dataset: str) -> tuple:
    """(mean, std) of ``dataset``: a ``normalization.STATS`` key or a ``smoothjax.data.DATASET_STATS`` name."""
    if dataset in norm.STATS:
        return norm.STATS[dataset]
    from smoothjax.data import DATASET_STATS

    if dataset in DATASET_STATS:
        return DATASET_STATS[dataset]
    raise ValueError(f"unknown dataset {dataset!r}; choose one of: "
                     f"{', '.join(sorted(set(norm.STATS) | set(DATASET_STATS)))}")


def import_checkpoint(path, arch: str | None = None, num_classes: int | None = None,
                      normalization: str | None = None, *, sigma: float | None = None, dataset: str | None = None,
                      mean=None, std=None, preset: str | None = None) -> ImportedCheckpoint:
    """Reads a PyTorch checkpoint into a smoothjax model, checking every tensor; see ``load``.

    The first layer (kind and per-channel statistics, pixel units) is decided in this order, each later item
    overriding the earlier: the source's preset (``preset``: ``cohen``, ``smoothadv``, ``siam`` or ``torchvision``,
    ``normalization.PRESETS``; without it, chosen from the layout where that is unambiguous: a bare CIFAR ResNet is
    SIAM's, a bare ResNet-50 torchvision's; a ``Sequential(normalisation, network)`` is Cohen's or SmoothAdv's, whose
    statistics are the same and whose kind is read from the stored buffers or inferred from the first layer given
    ``sigma``), ``dataset`` (statistics of ``cifar10``, ``imagenet``, ``imagenet32``, ``siam_cifar10`` or a
    ``smoothjax.data.DATASET_STATS`` name), explicit ``mean``/``std``, and ``normalization`` (the kind). The notes
    say what was chosen and why. ``sigma``: training noise, pixel units; default parsed from a ``noise_<s>`` path
    component.
    """
    notes = []
    obj = load_checkpoint(path)
    state_dict, info = _find_state_dict(obj, path)
    sd = layouts.split_state_dict(state_dict)
    network = layouts.infer_network(sd)
    saved_arch = info.get("arch") if isinstance(info.get("arch"), str) else None
    if arch is not None:
        layouts.check_arch(arch, network, "requested")
    elif saved_arch is not None:
        layouts.check_arch(saved_arch, network, "the checkpoint's")
    used_arch = arch or saved_arch
    if num_classes is not None and int(num_classes) != network.num_classes:
        raise ValueError(f"num_classes={num_classes} does not match the checkpoint, whose classifier "
                         f"{sd.name('fc.weight')} has shape {state_dict[sd.name('fc.weight')].shape} "
                         f"({network.num_classes} classes)")
    family = (layouts.arch_expectation(used_arch)["dataset"] if used_arch else
              "imagenet" if network.family == "resnet" else "cifar10")
    layout = ("Sequential(normalisation, network) as saved by Cohen et al. / SmoothAdv" if sd.sequential else
              "a bare network (normalisation in the data pipeline)")
    notes.append(f"architecture: {network.describe()} -> smoothjax {network.model_name}"
                 f"{'' if not network.model_kwargs else ' ' + str(network.model_kwargs)}, {network.num_classes} "
                 f"classes ({f'arch {used_arch!r}' if used_arch else 'no arch recorded'}"
                 + (" from the checkpoint" if not arch and saved_arch else "") + f"); layout: {layout}")
    if sigma is None:
        sigma = sigma_from_path(path)
        if sigma is not None:
            notes.append(f"sigma: {sigma:g}, read from the path")

    stored = norm.from_buffers(sd.normalization, lambda k: sd.name(k, "normalization"))
    if preset is None and not sd.sequential:
        preset = _BARE_SOURCE.get(family)
        how = (f"preset {preset!r}, chosen from the layout (a bare {family} network is how {preset} releases "
               "models; Cohen et al. and SmoothAdv save Sequential(normalisation, network))" if preset else "")
    else:
        how = f"preset {preset!r}, as requested" if preset else ""
    if preset is not None:
        kind, stats_mean, stats_std = norm.preset(preset, family)
    else:  # Cohen or SmoothAdv: same statistics; the kind comes from the buffers or the first layer below
        kind, (stats_mean, stats_std) = None, norm.STATS[family]
    if stored is not None:
        stats_mean, stats_std = stored.mean, stored.std or stats_std
    if dataset is not None:
        stats_mean, stats_std = _data_stats(dataset)
        how += ("; " if how else "") + f"statistics of {dataset!r}, as requested"
    if mean is not None or std is not None:
        how += ("; " if how else "") + "explicit " + " and ".join(n for n, v in (("mean", mean), ("std", std)) if v)
    stats_mean = tuple(float(v) for v in (mean if mean is not None else stats_mean))
    stats_std = tuple(float(v) for v in (std if std is not None else stats_std))
    if stored is not None and normalization is None:
        chosen = norm.Normalization(stored.kind, stats_mean, stats_std if stored.kind == "mean_std" else None,
                                    stored.reason)
        how = f"preset {preset!r} not used: the checkpoint stores its statistics" if preset else ""
    elif kind is not None and normalization is None:
        chosen = norm.Normalization(kind, stats_mean, stats_std if kind == "mean_std" else None, how)
        how = ""
    else:
        why = ("no normalisation statistics are stored; defaulting to mean/std (Cohen's NormalizeLayer; SmoothAdv's "
               "releases used centering, InputCenterLayer)")
        chosen = norm.choose(sd.network["conv1.weight"], sd.network.get("bn1.running_var"), sigma, stats_mean,
                             stats_std, "mean_std", why, requested=normalization)
    source = preset or {"mean_std": "cohen", "mean": "smoothadv"}.get(chosen.kind, "custom")
    notes.append(f"normalisation: {chosen.kind}, mean {chosen.mean}" + (f", std {chosen.std}" if chosen.std else "")
                 + f" -- {chosen.reason}" + (f"; {how}" if how else "") + f" (as {source}'s models; check an import "
                 "by its clean accuracy on the lossless test set against the published figure)")
    name = "cifar10" if dataset == "siam_cifar10" else (dataset or family)

    from smoothjax.models import get_model

    image_shape = (224, 224, 3) if network.family == "resnet" else (32, 32, 3)
    kwargs = dict(network.model_kwargs, mean=list(chosen.mean))
    if chosen.kind == "mean_std":
        kwargs["std"] = list(chosen.std)
    model = get_model(network.model_name, network.num_classes, dataset=name, normalization=chosen.kind, **kwargs)
    sample = jnp.zeros((1, *image_shape), jnp.float32)
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), sample))
    variables = layouts.to_variables(sd, network, dict(target), network.model_name)
    spec = {"model": network.model_name, "num_classes": network.num_classes, "dataset": name,
            "normalization": chosen.kind, "model_kwargs": kwargs, "image_shape": list(image_shape), "sigma": sigma,
            "source": {"path": str(Path(path).absolute()), "arch": used_arch, "epoch": _plain(info.get("epoch")),
                       "layout": "sequential" if sd.sequential else "bare"}}
    return ImportedCheckpoint(model, variables, spec, notes)


def _plain(value):
    return value if isinstance(value, (int, float, str)) or value is None else str(value)


def clean_accuracy(imported: ImportedCheckpoint, npz_path, *, batch_size: int = 500) -> tuple[float, int]:
    """``(accuracy, count)``: top-1 accuracy of the imported base classifier (no noise) on every image of an .npz
    (``x`` (N, H, W, C) uint8, ``y`` (N,)), e.g. the lossless CIFAR-10 test set, to compare with the figure its
    authors published: a wrong first layer costs a few points even when the logits look sane."""
    from smoothjax.data import get_source

    src = get_source("arrays", "test", path=npz_path, num_classes=imported.spec["num_classes"])
    if tuple(src.image_shape) != tuple(imported.spec["image_shape"]):
        raise ValueError(f"{npz_path} has images of shape {tuple(src.image_shape)}; the imported model takes "
                         f"{tuple(imported.spec['image_shape'])}")
    predict = jax.jit(lambda x: jnp.argmax(imported.model.apply(imported.variables, x), axis=-1))
    correct = 0
    for start in range(0, len(src), batch_size):
        images, labels = src.get_batch(np.arange(start, min(start + batch_size, len(src))))
        correct += int(np.sum(np.asarray(predict(images)) == labels))
    return correct / max(len(src), 1), len(src)


def load(path, arch: str | None = None, num_classes: int | None = None, normalization: str | None = None, *,
         sigma: float | None = None, dataset: str | None = None, preset: str | None = None, verbose: bool = True):
    """Loads a published PyTorch checkpoint as ``(model, variables)``, with PyTorch's logits.

    Args:
      path: a ``torch.save`` file (zip or legacy format) of Cohen et al. / SmoothAdv (``{'arch', 'state_dict',
        ...}``, model ``Sequential(normalisation, network)``, ``module.`` prefixes allowed), SIAM (bare plain CIFAR
        ResNet; PNI/CPNI models are refused) or a torchvision-layout ResNet-50. Never executed: only tensors,
        containers, numbers and strings are accepted.
      arch: ``cifar_resnet<D>``, ``imagenet32_resnet<D>`` or ``resnet50``; default the checkpoint's ``arch`` or
        what its keys show. A given arch must match the keys.
      num_classes: if given, must equal the classifier's output size.
      normalization: ``mean_std``, ``mean`` or ``none`` to override; default: stored in the checkpoint, else
        inferred from the first layer when ``sigma`` is known (see ``normalization``), else ``mean_std``.
      sigma: training noise level (default: from a ``noise_<s>`` path component), used for that inference.
      dataset: whose statistics the first layer uses (default: from the preset).
      preset: the source whose first layer to use: ``cohen``, ``smoothadv``, ``siam`` or ``torchvision``
        (``normalization.PRESETS``); default: chosen from the layout where unambiguous (``import_checkpoint``).
      verbose: print what was inferred to stderr.

    Returns:
      ``(model, variables)``: ``model.apply(variables, images)`` maps (B, H, W, 3) images in [0, 1] to
      (B, num_classes) float32 logits equal to PyTorch's on the same images (NCHW there).

    Raises:
      ValueError (one line) naming the problem: unreadable / truncated / not a checkpoint, unsafe pickle
      (``UnsafeCheckpointError``), wrong arch, wrong class count, unexpected / missing / mis-shaped tensors.
    """
    imported = import_checkpoint(path, arch, num_classes, normalization, sigma=sigma, dataset=dataset, preset=preset)
    if verbose:
        for note in imported.notes:
            print(f"torch_import: {note}", file=sys.stderr)
    return imported.model, imported.variables


__all__ = ["ImportedCheckpoint", "UnsafeCheckpointError", "clean_accuracy", "import_checkpoint", "load",
           "sigma_from_path"]
