"""Which input normalisation an imported network was trained behind: from its buffers, or from its first layer.

The published models normalise inside the model (Cohen's ``NormalizeLayer``: (x - mean) / std; SmoothAdv's
``InputCenterLayer``: x - mean) or in the data pipeline (SIAM), and Cohen's and SmoothAdv's layers keep their
statistics as plain attributes, so their state_dicts do not say which one was used. Using the wrong one silently
costs a CIFAR model most of its accuracy. When the layer did register its statistics (``0.means``/``0.sds``),
they are used as they are. Otherwise the first convolution and batch norm tell, given the training noise sigma:

During noise-augmented training the stem convolution saw ``s * (x + e - mean)`` with ``e ~ N(0, sigma^2)`` per pixel
and ``s = 1/std`` (mean/std) or 1 (centering), so the running variance of output channel c is at least the noise's
share, ``var_c >= sigma^2 * sum_k s_k^2 |w_ck|^2`` (image variance only adds to it). The ratio ``rho = min_c var_c /
(sigma^2 sum_k s_k^2 |w_ck|^2)`` is therefore >= 1 under the true normalisation and, since edge-like filters see
little image variance, close to 1; under mean/std it is 1/std^2 (about 25 for CIFAR) times smaller than under
centering. The hypothesis with ``0.7 <= rho <= 6`` (slack below for estimation noise and zero padding; 6 is below
0.7/std^2, 11 or more for the statistics here, so at most one hypothesis fits) is the one the network was trained
with; when neither fits (sigma overstated by more than ~1.2x or understated by more than ~2.4x, or no noise in
training) nothing is inferred and the default is used with a note. A centered network all of whose stem filters
capture image variance above ~5 sigma^2 would be left undecided, above ~16 sigma^2 read as mean/std. Measured on
CIFAR-10 ResNet-8s trained for 2 epochs at sigma=0.12 (the hardest published sigma: the most image variance relative
to noise), rho under the true normalisation was 2.5 (centering) and 4.0 (mean/std). The evidence fixes only the
product sigma * s, so a sigma overstated 2x or more can make a mean/std network look centered (and understated 2x,
the reverse): pass the training sigma, not another certification sigma.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Per-channel statistics (pixel units) of the reference code: Cohen's / SmoothAdv's datasets.py (SmoothAdv's
# ImageNet32 reuses CIFAR-10's) and SIAM's data pipeline.
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet32": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "siam_cifar10": ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262)),
}
KINDS = ("mean_std", "mean", "none")

# What each published source puts in front of its network, per data family: (kind, key of STATS). Cohen et al.'s
# NormalizeLayer and SmoothAdv's InputCenterLayer (architectures.py, for every data set) share datasets.py's
# statistics; SIAM normalises in its data pipeline (cifar_data.py, CIFAR-10 and CIFAR-100 alike); torchvision's
# ResNet-50 expects the ImageNet statistics in the data pipeline.
PRESETS = {
    "cohen": {"cifar10": ("mean_std", "cifar10"), "imagenet32": ("mean_std", "imagenet32"),
              "imagenet": ("mean_std", "imagenet")},
    "smoothadv": {"cifar10": ("mean", "cifar10"), "imagenet32": ("mean", "imagenet32"), "imagenet": ("mean", "imagenet")},
    "siam": {"cifar10": ("mean_std", "siam_cifar10")},
    "torchvision": {"imagenet": ("mean_std", "imagenet")},
}


def preset(name: str, family: str) -> tuple[str, tuple, tuple]:
    """``(kind, mean, std)`` of source ``name`` (a key of ``PRESETS``) for a network of data ``family``
    (``cifar10``, ``imagenet32`` or ``imagenet``); raises a one-line ValueError naming what is allowed."""
    if name not in PRESETS:
        raise ValueError(f"unknown normalisation preset {name!r}; choose one of: {', '.join(PRESETS)}")
    if family not in PRESETS[name]:
        raise ValueError(f"preset {name!r} has statistics for {', '.join(PRESETS[name])} networks only; this "
                         f"checkpoint is a network for {family}: choose one of "
                         f"{', '.join(k for k, v in PRESETS.items() if family in v)} or pass mean and std")
    kind, key = PRESETS[name][family]
    return kind, *STATS[key]
_MEAN_NAMES, _STD_NAMES = ("means", "mean", "mu"), ("sds", "std", "stds", "sigma")
RHO_MIN, RHO_MAX = 0.7, 6.0


@dataclass(frozen=True)
class Normalization:
    """The first layer of the imported model: ``kind`` in ``KINDS``, per-channel ``mean`` and ``std`` (pixel
    units; ``std`` is None unless kind is mean_std), and ``reason``, a sentence saying how it was decided."""

    kind: str
    mean: tuple
    std: tuple | None
    reason: str


def from_buffers(tensors: dict, names) -> Normalization | None:
    """The normalisation stored in the state_dict's normalisation layer, or None when it stores nothing.

    ``tensors`` maps the layer's stripped keys to arrays; ``names(key)`` gives a key as written in the file.
    Raises ValueError on tensors that are not a per-channel mean or std.
    """
    if not tensors:
        return None
    mean = std = None
    for key, value in tensors.items():
        # float32 buffers: 7 significant digits give back the decimal statistics they were made from.
        flat = [float(f"{v:.7g}") for v in np.asarray(value, np.float64).reshape(-1)]
        if key in _MEAN_NAMES and len(flat) in (1, 3):
            mean = tuple(flat)
        elif key in _STD_NAMES and len(flat) in (1, 3):
            std = tuple(flat)
        else:
            raise ValueError(f"unexpected key {names(key)} (shape {tuple(np.shape(value))}) in the normalisation "
                             f"layer; expected per-channel {'/'.join(_MEAN_NAMES)} and {'/'.join(_STD_NAMES)}")
    if mean is None:
        raise ValueError(f"the normalisation layer stores {', '.join(names(k) for k in tensors)} but no mean")
    if std is not None and min(std) <= 0:
        raise ValueError(f"the normalisation layer's std {std} is not positive")
    kind = "mean_std" if std is not None else "mean"
    return Normalization(kind, mean, std, f"read from the checkpoint's normalisation layer ({kind})")


def noise_floor_ratios(stem_weight: np.ndarray, running_var: np.ndarray, sigma: float, std) -> dict:
    """``rho`` (module docstring) of the stem under mean/std normalisation with ``std`` and under centering.

    Args:
      stem_weight: (O, C, kh, kw) first convolution in PyTorch layout.
      running_var: (O,) running variance of the batch norm that follows it.
      sigma: training noise level, pixel units, > 0.
      std: (C,) per-channel std of the mean/std hypothesis.

    Returns:
      ``{"mean_std": rho, "mean": rho}``; each is >= 1 (up to estimation noise) under the true normalisation.
    """
    w2 = np.square(np.asarray(stem_weight, np.float64)).sum(axis=(2, 3))  # (O, C)
    var = np.asarray(running_var, np.float64)
    alive = w2.sum(axis=1) > 1e-12 * max(float(w2.sum(axis=1).max()), 1e-30)
    if not alive.any() or var.shape != (w2.shape[0],):
        return {}
    out = {}
    for kind, scale2 in (("mean_std", 1.0 / np.square(np.asarray(std, np.float64))), ("mean", np.ones(w2.shape[1]))):
        out[kind] = float(np.min(var[alive] / (w2[alive] @ scale2)) / sigma**2)
    return out


def choose(stem_weight, running_var, sigma: float | None, mean, std, default: str, default_why: str,
           requested: str | None = None) -> Normalization:
    """Decides the normalisation: ``requested`` if given, else the batch-norm evidence, else ``default``.

    ``mean``/``std`` are the statistics the first layer uses; ``sigma`` the training noise (None or 0: no
    evidence). The reason says which source decided and, when the evidence disagrees with ``requested``, warns.
    """
    usable = sigma and std is not None and running_var is not None
    ratios = noise_floor_ratios(stem_weight, running_var, sigma, std) if usable else {}
    fits = [k for k in ("mean_std", "mean") if RHO_MIN <= ratios.get(k, 0.0) <= RHO_MAX]
    inferred = min(fits, key=lambda k: abs(np.log(ratios[k])), default=None)
    evidence = (f"stem batch-norm variance / noise floor at sigma={sigma:g}: {ratios['mean_std']:.2f} under "
                f"mean/std, {ratios['mean']:.2f} under centering" if ratios else "")
    if requested is not None:
        if requested not in KINDS:
            raise ValueError(f"unknown normalization {requested!r}; choose one of: {', '.join(KINDS)}")
        note = "as requested"
        if inferred and requested != "none" and inferred != requested:
            note += f" (WARNING: the checkpoint looks like {inferred}: {evidence})"
        return Normalization(requested, tuple(mean), tuple(std) if requested == "mean_std" else None, note)
    if inferred:
        return Normalization(inferred, tuple(mean), tuple(std) if inferred == "mean_std" else None,
                             f"inferred from the first layer ({evidence}; the true one is >= 1 and near 1)")
    why = default_why
    if ratios:
        why += f"; the first layer does not fit sigma={sigma:g} ({evidence}): is sigma right?"
    elif not sigma and "bare network" not in default_why:
        why += "; pass the training sigma to infer it from the first layer"
    return Normalization(default, tuple(mean), tuple(std) if default == "mean_std" else None,
                         f"{why}; override with normalization='mean_std'|'mean'")
