"""Imports published PyTorch checkpoints (Cohen et al., SmoothAdv, SIAM, torchvision ResNet-50) as smoothjax models.

  model, variables = smoothjax.torch_import.load("models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar")
  python -m smoothjax.torch_import IN.pth.tar --workdir runs/NAME [--arch ...] [--sigma ...]

The file is read without PyTorch and without running its pickle (``smoothjax.torch_pickle``); the network is
recognised from its keys (``layouts``), its input normalisation read from the checkpoint or inferred from its
first layer (``normalization``), and every tensor is checked against the smoothjax model before the variables are
returned. The result's logits equal PyTorch's (same images in [0, 1], NHWC instead of NCHW) to float32 rounding.
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
from smoothjax.torch_pickle import UnsafeCheckpointError, load_checkpoint


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


def _statistics(dataset: str | None, origin: str) -> tuple[str, str]:
    """(dataset name for model.json, key of the statistics)."""
    if dataset is None:
        return ("cifar10", "siam_cifar10") if origin == "siam" else (origin, origin)
    if dataset in norm.STATS:
        return ("cifar10" if dataset == "siam_cifar10" else dataset), dataset
    from smoothjax.data import DATASET_STATS

    if dataset in DATASET_STATS:
        return dataset, dataset
    raise ValueError(f"unknown dataset {dataset!r}; choose one of: "
                     f"{', '.join(sorted(set(norm.STATS) | set(DATASET_STATS)))}")


def import_checkpoint(path, arch: str | None = None, num_classes: int | None = None,
                      normalization: str | None = None, *, sigma: float | None = None, dataset: str | None = None,
                      mean=None, std=None) -> ImportedCheckpoint:
    """Reads a PyTorch checkpoint into a smoothjax model, checking every tensor; see ``load``.

    Extra arguments: ``sigma`` (training noise, pixel units; default parsed from a ``noise_<s>`` path component)
    lets the normalisation be inferred when the checkpoint does not store it; ``dataset`` (``cifar10``,
    ``imagenet``, ``imagenet32``, ``siam_cifar10``, or a ``smoothjax.data.DATASET_STATS`` name) and explicit
    ``mean``/``std`` choose the first layer's statistics.
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
    if used_arch:
        origin = layouts.arch_expectation(used_arch)["dataset"]
    else:
        origin = "imagenet" if network.family == "resnet" else ("cifar10" if sd.sequential else "siam")
    layout = ("Sequential(normalisation, network) as saved by Cohen et al. / SmoothAdv" if sd.sequential else
              "a bare network (SIAM / torchvision; normalisation in the data pipeline)")
    notes.append(f"architecture: {network.describe()} -> smoothjax {network.model_name}"
                 f"{'' if not network.model_kwargs else ' ' + str(network.model_kwargs)}, {network.num_classes} "
                 f"classes ({f'arch {used_arch!r}' if used_arch else 'no arch recorded'}"
                 + (" from the checkpoint" if not arch and saved_arch else "") + f"); layout: {layout}")

    name, stats_key = _statistics(dataset, origin)
    stats_mean, stats_std = norm.STATS[stats_key] if stats_key in norm.STATS else _data_stats(stats_key)
    stored = norm.from_buffers(sd.normalization, lambda k: sd.name(k, "normalization"))
    if stored is not None:
        stats_mean, stats_std = stored.mean, stored.std or stats_std
    stats_mean = tuple(float(v) for v in (mean if mean is not None else stats_mean))
    stats_std = tuple(float(v) for v in (std if std is not None else stats_std))
    if sigma is None:
        sigma = sigma_from_path(path)
        if sigma is not None:
            notes.append(f"sigma: {sigma:g}, read from the path")
    if stored is not None and normalization is None:
        chosen = norm.Normalization(stored.kind, stats_mean, stats_std if stored.kind == "mean_std" else None,
                                    stored.reason)
    else:
        default = "mean_std"
        # Only Sequential(normalisation, network) checkpoints leave the layer ambiguous; a bare network was fed by
        # its data pipeline (SIAM's mean/std), whose training need not have used Gaussian noise at all.
        why = ("no normalisation statistics are stored; defaulting to mean/std (Cohen's NormalizeLayer; SmoothAdv's "
               "CIFAR releases used centering, InputCenterLayer)" if sd.sequential else
               f"bare network: mean/std with the {stats_key} statistics of its data pipeline")
        chosen = norm.choose(sd.network["conv1.weight"], sd.network.get("bn1.running_var"),
                             sigma if sd.sequential else None, stats_mean, stats_std, default, why,
                             requested=normalization)
    notes.append(f"normalisation: {chosen.kind}, mean {chosen.mean}" + (f", std {chosen.std}" if chosen.std else "")
                 + f" -- {chosen.reason}")

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


def _data_stats(key):
    from smoothjax.data import DATASET_STATS

    return DATASET_STATS[key]


def _plain(value):
    return value if isinstance(value, (int, float, str)) or value is None else str(value)


def load(path, arch: str | None = None, num_classes: int | None = None, normalization: str | None = None, *,
         sigma: float | None = None, dataset: str | None = None, verbose: bool = True):
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
      dataset: whose statistics the first layer uses (default: from the arch / layout).
      verbose: print what was inferred to stderr.

    Returns:
      ``(model, variables)``: ``model.apply(variables, images)`` maps (B, H, W, 3) images in [0, 1] to
      (B, num_classes) float32 logits equal to PyTorch's on the same images (NCHW there).

    Raises:
      ValueError (one line) naming the problem: unreadable / truncated / not a checkpoint, unsafe pickle
      (``UnsafeCheckpointError``), wrong arch, wrong class count, unexpected / missing / mis-shaped tensors.
    """
    imported = import_checkpoint(path, arch, num_classes, normalization, sigma=sigma, dataset=dataset)
    if verbose:
        for note in imported.notes:
            print(f"torch_import: {note}", file=sys.stderr)
    return imported.model, imported.variables


__all__ = ["ImportedCheckpoint", "UnsafeCheckpointError", "import_checkpoint", "load", "sigma_from_path"]
