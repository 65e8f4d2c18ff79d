"""PyTorch state_dict layouts of the published randomized-smoothing models, and their smoothjax equivalents.

A state_dict is first split into the normalisation layer's tensors and the network's (Cohen et al. and SmoothAdv
save ``Sequential(normalisation, network)``, so keys start with ``0.`` / ``1.``; SIAM and bare torchvision
networks have no such prefix; ``module.`` components from ``DataParallel`` are dropped anywhere). The network's
keys then tell its family and size: a CIFAR ResNet (``layer1..3`` of BasicBlocks: depth 6n+2 and width from the
shapes) or a torchvision ResNet (``layer1..4`` of Bottlenecks: blocks per stage and stem width). ``to_variables``
maps every tensor to its Flax leaf (OIHW kernels to HWIO, linear weights transposed, batch-norm running
statistics into ``batch_stats``) and checks it against the shapes of the smoothjax model, naming any missing,
unexpected or mis-shaped tensor by its original key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

_NOISY_PARAM = re.compile(r"(^|\.)alpha(d|f)?(_[wio])?$")  # SIAM PNI (alpha, alpha_i/o) and CPNI (alphad_w, ...)
_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")
_BN_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias"), "running_mean": ("batch_stats", "mean"),
              "running_var": ("batch_stats", "var")}


@dataclass(frozen=True)
class Network:
    """What a state_dict holds, in smoothjax terms.

    ``family`` is ``cifar_resnet`` (``depth``, ``width``) or ``resnet`` (torchvision layout: ``stage_sizes``,
    ``base_width``); ``num_classes`` comes from the classifier's weight.
    """

    family: str
    num_classes: int
    depth: int = 0
    width: int = 1
    stage_sizes: tuple = ()
    base_width: int = 64

    @property
    def model_name(self) -> str:
        return f"cifar_resnet{self.depth}" if self.family == "cifar_resnet" else "resnet50"

    @property
    def model_kwargs(self) -> dict:
        if self.family == "cifar_resnet":
            return {"width": self.width} if self.width != 1 else {}
        out = {}
        if tuple(self.stage_sizes) != (3, 4, 6, 3):
            out["stage_sizes"] = list(self.stage_sizes)
        if self.base_width != 64:
            out["base_width"] = self.base_width
        return out

    def describe(self) -> str:
        if self.family == "cifar_resnet":
            return f"CIFAR ResNet of depth {self.depth}" + (f", width x{self.width}" if self.width != 1 else "")
        return f"torchvision ResNet with bottleneck stages {tuple(self.stage_sizes)}, stem width {self.base_width}"


@dataclass
class StateDict:
    """A state_dict split into the network's tensors and the normalisation layer's, keys without prefixes."""

    network: dict
    normalization: dict
    sequential: bool  # True for Sequential(normalisation, network) (Cohen, SmoothAdv); False for a bare network
    original: dict = field(default_factory=dict)  # stripped key -> key as written in the file

    def name(self, key: str, part: str = "network") -> str:
        return self.original.get((part, key), key)


def split_state_dict(state_dict: dict) -> StateDict:
    """Splits ``state_dict`` (NumPy arrays) into network and normalisation tensors; raises on foreign keys."""
    stripped = {}
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise ValueError(f"state_dict entry {key!r} is not a named tensor ({type(value).__name__})")
        parts = tuple(p for p in key.split(".") if p != "module")
        stripped[parts] = (key, value)
    heads = {parts[0] for parts in stripped}
    sequential = bool(heads) and heads <= {"0", "1"} and "1" in heads
    out = StateDict({}, {}, sequential)
    for parts, (key, value) in stripped.items():
        part = "normalization" if sequential and parts[0] == "0" else "network"
        name = ".".join(parts[1:] if sequential else parts)
        getattr(out, part)[name] = value
        out.original[(part, name)] = key
    noisy = [out.name(k) for k in out.network if _NOISY_PARAM.search(k)]
    if noisy:
        raise ValueError(f"state_dict holds noise-injection parameters ({', '.join(noisy[:3])}, ...): a SIAM PNI/CPNI "
                         f"model, which smoothjax does not support yet (only plain SIAM ResNets can be imported)")
    return out


def _block_indices(keys, stage: int) -> list[int]:
    found = {int(m.group(2)) for k in keys if (m := _BLOCK.match(k)) and int(m.group(1)) == stage}
    return sorted(found)


def infer_network(sd: StateDict) -> Network:
    """Recognises the network in ``sd`` from its keys and shapes (see ``Network``); raises when it is neither."""
    tensors = sd.network
    for key in ("conv1.weight", "fc.weight"):
        if key not in tensors:
            raise ValueError(f"state_dict has no {key!r}: not a CIFAR or torchvision ResNet (first keys: "
                             f"{', '.join(list(sd.original.values())[:4])})")
    stem, fc = tensors["conv1.weight"], tensors["fc.weight"]
    if stem.ndim != 4 or fc.ndim != 2 or stem.shape[1] != 3:
        raise ValueError(f"conv1.weight {stem.shape} / fc.weight {fc.shape} are not a ResNet stem and classifier")
    stages = [_block_indices(tensors, s) for s in range(1, 6)]
    num_stages = next((i for i, blocks in enumerate(stages) if not blocks), 5)
    for s, blocks in enumerate(stages[:num_stages]):
        if blocks != list(range(len(blocks))):
            raise ValueError(f"stage layer{s + 1} has blocks {blocks}: block numbers are not 0..n-1")
    bottleneck = any(k.endswith("conv3.weight") for k in tensors)
    if num_stages == 3 and not bottleneck and stem.shape[2:] == (3, 3):
        n = len(stages[0])
        if not (len(stages[1]) == len(stages[2]) == n):
            raise ValueError(f"CIFAR ResNet stages have {[len(s) for s in stages[:3]]} blocks; smoothjax needs "
                             f"equal stages (depth 6n+2)")
        if stem.shape[0] % 16:
            raise ValueError(f"conv1.weight has {stem.shape[0]} output channels, not a multiple of 16")
        return Network("cifar_resnet", int(fc.shape[0]), depth=6 * n + 2, width=stem.shape[0] // 16)
    if num_stages == 4 and bottleneck and stem.shape[2:] == (7, 7):
        return Network("resnet", int(fc.shape[0]), stage_sizes=tuple(len(s) for s in stages[:4]),
                       base_width=int(stem.shape[0]))
    raise ValueError(f"unrecognised network: {num_stages} stages, {'bottleneck' if bottleneck else 'basic'} blocks, "
                     f"{stem.shape[2]}x{stem.shape[3]} stem; supported: CIFAR ResNets (Cohen, SmoothAdv, SIAM) and "
                     f"torchvision's ResNet-50 layout")


def arch_expectation(arch: str) -> dict:
    """What a published ``arch`` name promises: ``family`` and ``depth``/``stage_sizes``, and its ``dataset``.

    ``cifar_resnet<D>`` (Cohen, SmoothAdv; CIFAR-10), ``imagenet32_resnet<D>`` (SmoothAdv: the CIFAR ResNet on
    32x32 ImageNet, 1000 classes, CIFAR-10 statistics in its normalisation layer) and ``resnet50`` (torchvision,
    ImageNet). Raises ValueError for any other name.
    """
    if m := re.fullmatch(r"(cifar|imagenet32)_resnet(\d+)", arch or ""):
        depth = int(m.group(2))
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"arch {arch!r} has depth {depth}; a CIFAR ResNet has depth 6n+2 (8, 20, 110, ...)")
        return {"family": "cifar_resnet", "depth": depth, "dataset": "cifar10" if m.group(1) == "cifar" else
                "imagenet32"}
    if arch == "resnet50":
        return {"family": "resnet", "stage_sizes": (3, 4, 6, 3), "dataset": "imagenet"}
    raise ValueError(f"unsupported arch {arch!r}; supported: cifar_resnet<depth> (e.g. cifar_resnet110), "
                     f"imagenet32_resnet<depth> (e.g. imagenet32_resnet110), resnet50")


def check_arch(arch: str, network: Network, source: str) -> None:
    """Raises a one-line ValueError when the state_dict's ``network`` is not the ``arch`` named by ``source``."""
    expect = arch_expectation(arch)
    if expect["family"] != network.family:
        raise ValueError(f"{source} arch {arch!r} does not fit the checkpoint, whose state_dict is a "
                         f"{network.describe()}")
    if network.family == "cifar_resnet" and expect["depth"] != network.depth:
        raise ValueError(f"{source} arch {arch!r} (depth {expect['depth']}) does not fit the checkpoint, whose "
                         f"state_dict is a {network.describe()} ({(network.depth - 2) // 6} blocks per stage)")
    if network.family == "resnet" and tuple(expect["stage_sizes"]) != tuple(network.stage_sizes):
        raise ValueError(f"{source} arch {arch!r} (stages {expect['stage_sizes']}) does not fit the checkpoint, "
                         f"whose state_dict is a {network.describe()}")


def _flax_path(key: str, network: Network):
    """(collection, path tuple, kind) of the Flax leaf for torch ``key``, or None when the key is foreign."""
    *module, leaf = key.split(".")
    if module == ["conv1"] and leaf == "weight":
        return "params", ("Conv_0", "kernel"), "conv"
    if module == ["bn1"]:
        return _bn(("BatchNorm_0",), leaf)
    if module == ["fc"] and leaf in ("weight", "bias"):
        return "params", ("Dense_0", "kernel" if leaf == "weight" else "bias"), "linear" if leaf == "weight" else ""
    m = _BLOCK.match(".".join(module))
    if not m:
        return None
    stage, index, inner = int(m.group(1)) - 1, int(m.group(2)), m.group(3)
    if network.family == "cifar_resnet":
        per_stage = (network.depth - 2) // 6
        block, convs, shortcut = f"BasicBlock_{stage * per_stage + index}", 2, 2
    else:
        block, convs, shortcut = f"Bottleneck_{sum(network.stage_sizes[:stage]) + index}", 3, 3
    if (cm := re.fullmatch(r"conv(\d)", inner)) and leaf == "weight" and 1 <= int(cm.group(1)) <= convs:
        return "params", (block, f"Conv_{int(cm.group(1)) - 1}", "kernel"), "conv"
    if (bm := re.fullmatch(r"bn(\d)", inner)) and 1 <= int(bm.group(1)) <= convs:
        return _bn((block, f"BatchNorm_{int(bm.group(1)) - 1}"), leaf)
    if inner == "downsample.0" and leaf == "weight":
        return "params", (block, f"Conv_{shortcut}", "kernel"), "conv"
    if inner == "downsample.1":
        return _bn((block, f"BatchNorm_{shortcut}"), leaf)
    return None


def _bn(prefix: tuple, leaf: str):
    if leaf == "num_batches_tracked":
        return "skip", (), ""
    if leaf not in _BN_LEAVES:
        return None
    collection, name = _BN_LEAVES[leaf]
    return collection, (*prefix, name), ""


def to_variables(sd: StateDict, network: Network, target: dict, model_name: str) -> dict:
    """Converts ``sd``'s network tensors into Flax variables with exactly the structure and shapes of ``target``.

    Args:
      sd: the split state_dict.
      network: what ``infer_network`` found (decides the block numbering).
      target: abstract variables of the smoothjax model (``jax.eval_shape`` of ``model.init``).
      model_name: for messages.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` of float32 NumPy arrays.

    Raises:
      ValueError naming the first unexpected, missing or mis-shaped tensor (by its key in the file).
    """
    out: dict = {}
    unexpected = []
    for key, value in sd.network.items():
        where = _flax_path(key, network)
        if where is None:
            unexpected.append(sd.name(key))
            continue
        collection, path, kind = where
        if collection == "skip":
            continue
        if kind == "conv":
            value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
        elif kind == "linear":
            value = value.T if value.ndim == 2 else value
        node = out.setdefault(collection, {})
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = (key, np.asarray(value, np.float32))
    if unexpected:
        raise ValueError(f"unexpected keys in state_dict (not part of {model_name}): {', '.join(unexpected[:5])}"
                         + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""))
    return _match(out, target, (), sd, model_name)


def _match(got: dict, target: dict, path: tuple, sd: StateDict, model_name: str) -> dict:
    result = {}
    for name, expected in target.items():
        where = path + (name,)
        if isinstance(expected, dict):
            result[name] = _match(got.get(name, {}), expected, where, sd, model_name)
            continue
        if name not in got:
            raise ValueError(f"state_dict lacks the tensor for {model_name} variable {'/'.join(where)} "
                             f"(missing key)")
        key, value = got[name]
        if tuple(value.shape) != tuple(expected.shape):
            raise ValueError(f"tensor {sd.name(key)} has shape {_torch_shape(value, key)} but {model_name} expects "
                             f"{_torch_shape(np.empty(expected.shape), key)} (as {'/'.join(where)})")
        result[name] = value
    extra = [n for n in got if n not in target]
    if extra:
        raise ValueError(f"unexpected keys in state_dict (not part of {model_name}): "
                         f"{', '.join(sd.name(k) for k in _keys_under(got[extra[0]]))[:300]}")
    return result


def _keys_under(node) -> list[str]:
    if isinstance(node, tuple):
        return [node[0]]
    return [k for child in node.values() for k in _keys_under(child)]


def _torch_shape(value, key: str) -> tuple:
    """The shape in PyTorch's convention (OIHW kernels, (out, in) linear weights) for messages."""
    if value.ndim == 4:
        return tuple(value.transpose(3, 2, 0, 1).shape)
    if value.ndim == 2 and key.endswith("weight"):
        return tuple(value.T.shape)
    return tuple(value.shape)
