"""Command line: turn a published PyTorch checkpoint into a smoothjax workdir.

  python -m smoothjax.torch_import models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar --workdir runs/cohen_s025
  python certify.py --config=configs/cifar10.py --workdir=runs/cohen_s025 \\
      --config.data_path=../shared/data/cifar10-test.npz --config.certify.skip=20

Prints what it inferred (architecture, classes, normalisation, sigma) and the certify command; exits with a
one-line error on bad input. ``--sigma`` (the training noise) is written to model.json as certify.py's default
sigma; without it, a ``noise_<s>`` component of the path is used.
"""

from __future__ import annotations

import argparse
import sys

_CONFIGS = {"cifar10": "configs/cifar10.py", "imagenet": "configs/imagenet.py"}


def _floats(text: str) -> tuple:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smoothjax.torch_import", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a torch.save file (.pth.tar / .pth / .pt), zip or legacy format")
    parser.add_argument("--workdir", required=True, help="new run directory to write (model.json + checkpoints/0)")
    parser.add_argument("--arch", help="cifar_resnet<D>, imagenet32_resnet<D> or resnet50 (default: checkpoint's)")
    parser.add_argument("--num-classes", type=int, help="expected number of classes (checked)")
    parser.add_argument("--normalization", choices=("mean_std", "mean", "none"),
                        help="override the input normalisation (default: stored or inferred)")
    parser.add_argument("--sigma", type=float, help="training noise level (default: from noise_<s> in the path)")
    parser.add_argument("--dataset", help="statistics for the first layer: cifar10, imagenet, imagenet32, "
                                          "siam_cifar10, cifar100 (default: from the arch / layout)")
    parser.add_argument("--preset", choices=("cohen", "smoothadv", "siam", "torchvision"),
                        help="whose first layer the network was trained behind (default: from the layout where "
                             "unambiguous: bare CIFAR ResNet = siam, bare ResNet-50 = torchvision)")
    parser.add_argument("--mean", type=_floats, help="explicit per-channel mean, e.g. 0.49,0.48,0.45")
    parser.add_argument("--std", type=_floats, help="explicit per-channel std")
    parser.add_argument("--check_data", help="an .npz of test images (x uint8 NHWC, y) to measure the imported base "
                                             "classifier's clean accuracy on, to compare with the published figure")
    args = parser.parse_args(argv)

    from smoothjax.torch_import import clean_accuracy, import_checkpoint, sigma_from_path
    from smoothjax.torch_import.workdir import write_workdir

    try:
        sigma = args.sigma if args.sigma is not None else sigma_from_path(args.checkpoint)
        if args.sigma is None and sigma is not None:
            print(f"sigma: {sigma:g}, read from the path (written to model.json; override with --sigma)")
        if sigma is None:
            raise ValueError("pass --sigma (the noise level the model was trained for): the path has no noise_<s> "
                             "component to read it from")
        imported = import_checkpoint(args.checkpoint, args.arch, args.num_classes, args.normalization, sigma=sigma,
                                     dataset=args.dataset, mean=args.mean, std=args.std, preset=args.preset)
        for note in imported.notes:
            print(note)
        write_workdir(imported, args.workdir, sigma)
        if args.check_data:
            accuracy, count = clean_accuracy(imported, args.check_data)
            print(f"clean accuracy of the imported base classifier on {count} images of {args.check_data}: "
                  f"{accuracy:.4f} (compare with the published figure)")
    except ValueError as e:
        print(f"python -m smoothjax.torch_import: error: {e}", file=sys.stderr)
        return 2
    spec = imported.spec
    print(f"wrote {args.workdir}: model.json ({spec['model']}, {spec['num_classes']} classes, {spec['normalization']}"
          f" normalisation, sigma={sigma:g}) and checkpoints/0")
    config = _CONFIGS.get(spec["dataset"])
    if config:
        print(f"certify with: python certify.py --config={config} --workdir={args.workdir}"
              + (" --config.data_path=<cifar10-test.npz>" if spec["dataset"] == "cifar10" else
                 " --config.data_dir=<tfds dir>"))
    else:
        print(f"certify.py has no data source for {spec['dataset']!r}; use smoothjax.checkpointing.load_model("
              f"{args.workdir!r}) with your own images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
