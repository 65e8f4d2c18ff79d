"""Writes the PyTorch checkpoint fixtures of tests/test_torch_import.py (a developer tool; needs PyTorch).

  pip install torch==2.13.0   # CPU build; optional, never a dependency of smoothjax or of its tests
  python tools/make_torch_fixtures.py [--out=tests/fixtures/torch]

Each fixture is a small, randomly initialised network saved the way the published code saves it, next to an
``.npz`` holding fixed input images (``pixels``: NHWC uint8, the model sees ``pixels / 255``) and PyTorch's
float64-cast logits on them (``logits``), which the tests compare with the
imported JAX model. Layouts (written here by hand from the public reference code, so torchvision is not needed):

- Cohen et al. / SmoothAdv: ``{'epoch', 'arch', 'state_dict', 'optimizer'}`` where the model is
  ``Sequential(NormalizeLayer | InputCenterLayer, network)``, the network optionally in ``DataParallel``
  (``module.`` prefixes); the normalisation layers keep their statistics as plain attributes (not in the
  state_dict), except in one fixture whose layer registers them as buffers.
- SIAM (Nemcovsky et al.): ``{'epoch', 'state_dict', 'best_prec1', 'optimizer'}`` of a bare CIFAR ResNet, plus
  one CPNI model (noisy convolutions with ``alphad_w``/``alphaf_w`` parameters) that smoothjax must refuse.
- torchvision's ResNet layout (bottleneck, stride on the 3x3) at reduced width and depth.

Batch-norm running statistics come from forward passes on smooth synthetic images plus Gaussian noise of the
fixture's sigma, through the fixture's normalisation layer, as in noise-augmented training; that is what lets
the importer infer which normalisation layer a checkpoint was trained with. Both serialisation formats are
written (``_use_new_zipfile_serialization=False`` gives the legacy one). Tensor values are deterministic for a
given PyTorch version (the files' bytes are not: torch.save embeds a serialisation id, and legacy files use memory
addresses as storage keys); total size under 5 MB.
"""

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from absl import app, flags

_OUT = flags.DEFINE_string("out", str(Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "torch"),
                           "folder to write the fixtures to")

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SIAM_MEAN, SIAM_STD = [0.491, 0.482, 0.447], [0.247, 0.243, 0.262]


class NormalizeLayer(nn.Module):
    """(x - mean) / std per channel; statistics as attributes (Cohen) or buffers (``buffers=True``)."""

    def __init__(self, mean, std, buffers=False):
        super().__init__()
        if buffers:
            self.register_buffer("means", torch.tensor(mean))
            self.register_buffer("sds", torch.tensor(std))
        else:
            self.means, self.sds = torch.tensor(mean), torch.tensor(std)

    def forward(self, x):
        return (x - self.means.view(1, -1, 1, 1)) / self.sds.view(1, -1, 1, 1)


class InputCenterLayer(nn.Module):
    """x - mean per channel (SmoothAdv)."""

    def __init__(self, mean, buffers=False):
        super().__init__()
        if buffers:
            self.register_buffer("means", torch.tensor(mean))
        else:
            self.means = torch.tensor(mean)

    def forward(self, x):
        return x - self.means.view(1, -1, 1, 1)


class ColoredNoisyConv(nn.Conv2d):
    """The parameters of SIAM's CPNI convolution (weight-noise variant); deterministic forward (no noise)."""

    def __init__(self, *args, rank=1, **kwargs):
        super().__init__(*args, **kwargs)
        size = self.weight.numel()
        self.alphad_w = nn.Parameter(torch.full((size,), 0.0625))
        self.alphaf_w = nn.Parameter(torch.full((1, size, rank), 0.01))


class NoisyLinear(nn.Linear):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha = nn.Parameter(torch.full_like(self.weight, 0.25))


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride, conv=nn.Conv2d):
        super().__init__()
        self.conv1 = conv(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(conv(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):
    """He et al. CIFAR ResNet (depth 6n+2) in the layout of Cohen's and SIAM's code."""

    def __init__(self, depth, num_classes, conv=nn.Conv2d, linear=nn.Linear):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = conv(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        inplanes = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = [BasicBlock(inplanes if b == 0 else planes, planes, 2 if i and not b else 1, conv)
                      for b in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = planes
        self.fc = linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3)))


class Bottleneck(nn.Module):
    def __init__(self, inplanes, width, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.downsample = None
        if stride != 1 or inplanes != width * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, width * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(width * 4))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchvisionResNet(nn.Module):
    """torchvision.models.resnet layout (v1.5: stride on the 3x3) with configurable stages and width."""

    def __init__(self, stage_sizes, base_width, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, base_width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = base_width
        for i, n in enumerate(stage_sizes):
            width = base_width * 2 ** i
            blocks = []
            for b in range(n):
                blocks.append(Bottleneck(inplanes, width, 2 if i and not b else 1))
                inplanes = width * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


def smooth_images(generator, count, size):
    """Smooth random images in [0, 1]: 4x4 random colours bilinearly upsampled (NCHW)."""
    low = torch.rand(count, 3, 4, 4, generator=generator)
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def calibrate(model, generator, size, sigma, batches=6, batch_size=32):
    """Randomises batch-norm affine parameters, then sets running statistics from noisy images (train mode)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.normal_(0.0, 0.1, generator=generator)
                m.momentum = None  # cumulative average over all calibration batches
        model.train()
        for _ in range(batches):
            x = smooth_images(generator, batch_size, size)
            model(x + sigma * torch.randn(x.shape, generator=generator))
    model.eval()


def build(spec, generator):
    """Returns (model whose input is [0, 1] NCHW images, checkpoint dict)."""
    kind = spec["kind"]
    if kind == "resnet":
        net = TorchvisionResNet(spec["stage_sizes"], spec["base_width"], spec["num_classes"])
    elif kind == "cpni":
        net = CifarResNet(spec["depth"], spec["num_classes"], conv=ColoredNoisyConv, linear=NoisyLinear)
    else:
        net = CifarResNet(spec["depth"], spec["num_classes"])
    if spec.get("data_parallel"):
        net = nn.DataParallel(net)
    if kind in ("cohen", "smoothadv", "resnet"):
        norm = spec["norm"]
        layer = (NormalizeLayer(norm["mean"], norm["std"], spec.get("buffers", False)) if norm.get("std")
                 else InputCenterLayer(norm["mean"], spec.get("buffers", False)))
        model = nn.Sequential(layer, net)
    else:  # SIAM normalises in its data pipeline; the checkpoint holds the bare network.
        model = nn.Sequential(NormalizeLayer(SIAM_MEAN, SIAM_STD), net)
    calibrate(model, generator, spec["image_size"], spec["sigma"])
    saved = model if kind in ("cohen", "smoothadv", "resnet") else net
    optimizer = torch.optim.SGD(saved.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    checkpoint = {"epoch": 90, "state_dict": saved.state_dict(), "optimizer": optimizer.state_dict()}
    if "arch" in spec:
        checkpoint["arch"] = spec["arch"]
    if kind in ("siam", "cpni"):
        checkpoint["best_prec1"] = 0.5
    return model, checkpoint


COHEN = {"mean": CIFAR_MEAN, "std": CIFAR_STD}
CENTER = {"mean": CIFAR_MEAN}
FIXTURES = [
    # name, spec; "expect" is what the importer must produce (model name, kwargs, normalisation, its statistics).
    ("cohen_cifar_resnet20_noise_0.25_legacy", dict(
        kind="cohen", arch="cifar_resnet20", depth=20, num_classes=10, norm=COHEN, sigma=0.25, legacy=True,
        expect=dict(model="cifar_resnet20", normalization="mean_std", mean=CIFAR_MEAN, std=CIFAR_STD))),
    ("cohen_cifar_resnet8_noise_0.50_zip", dict(
        kind="cohen", arch="cifar_resnet8", depth=8, num_classes=10, norm=COHEN, sigma=0.5,
        expect=dict(model="cifar_resnet8", normalization="mean_std", mean=CIFAR_MEAN, std=CIFAR_STD))),
    ("smoothadv_cifar_resnet8_noise_0.25_zip", dict(
        kind="smoothadv", arch="cifar_resnet8", depth=8, num_classes=10, norm=CENTER, sigma=0.25,
        data_parallel=True, expect=dict(model="cifar_resnet8", normalization="mean", mean=CIFAR_MEAN))),
    ("smoothadv_cifar_resnet8_noise_0.12_buffers_legacy", dict(
        kind="smoothadv", arch="cifar_resnet8", depth=8, num_classes=10, norm=CENTER, sigma=0.12, buffers=True,
        data_parallel=True, legacy=True,
        expect=dict(model="cifar_resnet8", normalization="mean", mean=CIFAR_MEAN))),
    ("smoothadv_imagenet32_resnet8_noise_0.25_zip", dict(
        kind="smoothadv", arch="imagenet32_resnet8", depth=8, num_classes=1000, norm=COHEN, sigma=0.25,
        expect=dict(model="cifar_resnet8", normalization="mean_std", mean=CIFAR_MEAN, std=CIFAR_STD))),
    ("siam_resnet8_zip", dict(
        kind="siam", depth=8, num_classes=10, sigma=0.0,
        expect=dict(model="cifar_resnet8", normalization="mean_std", mean=SIAM_MEAN, std=SIAM_STD))),
    ("siam_resnet8_legacy", dict(
        kind="siam", depth=8, num_classes=10, sigma=0.0, data_parallel=True, legacy=True,
        expect=dict(model="cifar_resnet8", normalization="mean_std", mean=SIAM_MEAN, std=SIAM_STD))),
    ("siam_cpni_resnet8_zip", dict(kind="cpni", depth=8, num_classes=10, sigma=0.0, expect=None)),
    ("torchvision_resnet_noise_0.50_zip", dict(
        kind="resnet", stage_sizes=(2, 2, 1, 1), base_width=4, num_classes=10, image_size=64, data_parallel=True,
        norm={"mean": IMAGENET_MEAN, "std": IMAGENET_STD}, sigma=0.5,
        expect=dict(model="resnet50", normalization="mean_std", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    model_kwargs={"stage_sizes": [2, 2, 1, 1], "base_width": 4}))),
    ("torchvision_resnet_noise_0.50_legacy", dict(
        kind="resnet", stage_sizes=(1, 1, 2, 1), base_width=4, num_classes=10, image_size=64, legacy=True,
        norm={"mean": IMAGENET_MEAN, "std": IMAGENET_STD}, sigma=0.5,
        expect=dict(model="resnet50", normalization="mean_std", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    model_kwargs={"stage_sizes": [1, 1, 2, 1], "base_width": 4}))),
]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    out = Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    total = 0
    for seed, (name, spec) in enumerate(FIXTURES):
        spec.setdefault("image_size", 32)
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(1000 + seed)
        model, checkpoint = build(spec, generator)
        images = torch.cat([smooth_images(generator, 3, spec["image_size"]),
                            torch.rand(1, 3, spec["image_size"], spec["image_size"], generator=generator)])
        images = torch.round(images * 255) / 255  # stored as uint8, so the tests feed exactly these pixels
        with torch.no_grad():
            logits = model(images).double().numpy()
        path = out / f"{name}.pth.tar"
        torch.save(checkpoint, path, _use_new_zipfile_serialization=not spec.get("legacy", False))
        meta = {"expect": spec["expect"], "num_classes": spec["num_classes"], "sigma": spec["sigma"],
                "torch_version": torch.__version__}
        pixels = np.rint(images.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
        np.savez_compressed(out / f"{name}.npz", pixels=pixels, logits=logits, meta=np.array(json.dumps(meta)))
        size = path.stat().st_size + (out / f"{name}.npz").stat().st_size
        total += size
        print(f"{name}: {size / 1e6:.2f} MB, logits {logits.shape}")
    print(f"total {total / 1e6:.2f} MB in {out}")


if __name__ == "__main__":
    app.run(main)
