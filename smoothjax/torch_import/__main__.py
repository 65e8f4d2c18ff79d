"""Command line: turn a published PyTorch checkpoint into a smoothjax workdir.

  python -m smoothjax.torch_import models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar --workdir=runs/cohen_s025
  python certify.py --config=configs/cifar10.py --workdir=runs/cohen_s025 \\
      --config.data_path=../shared/data/cifar10-test.npz --config.certify.skip=20

Flags (absl): ``--workdir`` (required), ``--arch``, ``--num-classes``, ``--normalization mean_std|mean|none``,
``--sigma``, ``--dataset``, ``--preset cohen|smoothadv|siam|torchvision`` (whose first layer the network was trained
behind), ``--mean`` and ``--std`` (comma-separated numbers), ``--check_data`` (an .npz of test images: the imported
classifier's clean accuracy, to compare with the published figure). Prints what it inferred (architecture, classes,
normalisation, sigma) and the certify command; exits with status 2 and a one-line error on bad input. ``--sigma`` (the training noise) is written to model.json as certify.py's default sigma; without it, a
``noise_<s>`` component of the path is used.
"""

from __future__ import annotations

import sys
import zipfile

from absl import flags

_CONFIGS = {"cifar10": "configs/cifar10.py", "imagenet": "configs/imagenet.py"}
_PROG = "python -m smoothjax.torch_import"


def _flags() -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "new run directory to write (model.json + checkpoints/0)", flag_values=fv)
    flags.DEFINE_string("arch", None, "cifar_resnet<D>, imagenet32_resnet<D> or resnet50 (default: the checkpoint's)",
                        flag_values=fv)
    flags.DEFINE_integer("num-classes", None, "expected number of classes (checked)", flag_values=fv)
    flags.DEFINE_enum("normalization", None, ["mean_std", "mean", "none"],
                      "override the input normalisation (default: stored or inferred)", flag_values=fv)
    flags.DEFINE_float("sigma", None, "training noise level (default: from noise_<s> in the path)", flag_values=fv)
    flags.DEFINE_string("dataset", None, "statistics for the first layer: cifar10, imagenet, imagenet32, siam_cifar10, "
                        "cifar100 (default: from the arch / layout)", flag_values=fv)
    flags.DEFINE_enum("preset", None, ["cohen", "smoothadv", "siam", "torchvision"],
                      "whose first layer the network was trained behind (default: from the layout where unambiguous: "
                      "bare CIFAR ResNet = siam, bare ResNet-50 = torchvision)", flag_values=fv)
    flags.DEFINE_list("mean", None, "explicit per-channel mean, e.g. 0.49,0.48,0.45", flag_values=fv)
    flags.DEFINE_list("std", None, "explicit per-channel std", flag_values=fv)
    flags.DEFINE_string("check_data", None, "an .npz of test images (x uint8 NHWC, y) to measure the imported base "
                        "classifier's clean accuracy on, to compare with the published figure", flag_values=fv)
    return fv


def _floats(name: str, values) -> tuple | None:
    try:
        return None if values is None else tuple(float(v) for v in values)
    except ValueError:
        raise ValueError(f"--{name}={','.join(values)} is not a comma-separated list of numbers") from None


def main(argv=None) -> int:
    """Parses ``argv`` (default ``sys.argv[1:]``: one checkpoint path and the flags), writes the workdir; returns 0,
    or 2 after a one-line error on stderr."""
    fv = _flags()
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help" in argv or "-h" in argv:
        print(f"usage: {_PROG} CHECKPOINT --workdir=DIR [flags]\n\n{__doc__.splitlines()[0]}\n{fv.get_help()}")
        return 0
    try:
        rest = fv([_PROG, *map(str, argv)])[1:]
        if len(rest) != 1 or not fv.workdir:
            raise flags.Error("give one checkpoint file (.pth.tar / .pth / .pt) and --workdir=DIR")
    except flags.Error as e:
        print(f"{_PROG}: error: {e}", file=sys.stderr)
        return 2

    from smoothjax.torch_import import clean_accuracy, import_checkpoint, sigma_from_path
    from smoothjax.torch_import.workdir import write_workdir

    checkpoint, workdir = rest[0], fv.workdir
    try:
        sigma = fv.sigma if fv.sigma is not None else sigma_from_path(checkpoint)
        if fv.sigma is None and sigma is not None:
            print(f"sigma: {sigma:g}, read from the path (written to model.json; override with --sigma)")
        if sigma is None:
            raise ValueError("pass --sigma (the noise level the model was trained for): the path has no noise_<s> "
                             "component to read it from")
        imported = import_checkpoint(checkpoint, fv.arch, fv["num-classes"].value, fv.normalization, sigma=sigma,
                                     dataset=fv.dataset, mean=_floats("mean", fv.mean), std=_floats("std", fv.std),
                                     preset=fv.preset)
        for note in imported.notes:
            print(note)
        write_workdir(imported, workdir, sigma)
        if fv.check_data:
            accuracy, count = clean_accuracy(imported, fv.check_data)
            print(f"clean accuracy of the imported base classifier on {count} images of {fv.check_data}: "
                  f"{accuracy:.4f} (compare with the published figure)")
    except (ValueError, OSError, zipfile.BadZipFile) as e:  # bad input, unreadable or unwritable path, damaged zip
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, OSError) and e.filename is not None:
            message = f"{e.filename}: {e.strerror or type(e).__name__}"
        print(f"{_PROG}: error: {message}", file=sys.stderr)
        return 2
    spec = imported.spec
    print(f"wrote {workdir}: model.json ({spec['model']}, {spec['num_classes']} classes, {spec['normalization']}"
          f" normalisation, sigma={sigma:g}) and checkpoints/0")
    config = _CONFIGS.get(spec["dataset"])
    if config:
        print(f"certify with: python certify.py --config={config} --workdir={workdir}"
              + (" --config.data_path=<cifar10-test.npz>" if spec["dataset"] == "cifar10" else
                 " --config.data_dir=<tfds dir>"))
    else:
        print(f"certify.py has no data source for {spec['dataset']!r}; use smoothjax.checkpointing.load_model("
              f"{workdir!r}) with your own images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
