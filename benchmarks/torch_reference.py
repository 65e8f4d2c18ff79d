"""PyTorch reference for the benchmarks: Cohen et al.'s CIFAR ResNet, train step and noise-sampling loop.

Imported by ``train_throughput.py`` and ``certify_throughput.py`` only when PyTorch is importable; smoothjax itself
never imports it (PyTorch is not a dependency). Written here from the published description of the reference code
(Cohen et al. 2019, ``archs/cifar_resnet.py`` and ``core.py``), not copied:

* ``NormalizeLayer`` (per-channel (x - mean) / std) in front of a He et al. CIFAR ResNet of depth 6n+2: a 3x3 stem
  (3 -> 16), three stages of n BasicBlocks (16, 32, 64 channels, strides 1, 2, 2), 8x8 average pooling and a
  linear layer. Convolutions have no bias; each is followed by BatchNorm2d (PyTorch defaults); a block whose shape
  changes has a 1x1-conv + BatchNorm shortcut. Conv weights ~ N(0, 2 / (k * k * out_channels)).
* ``make_train_step``: ``x + randn_like(x) * sigma``, cross-entropy, backward, SGD (momentum 0.9, weight decay 1e-4).
* ``sample_noise``: Cohen's ``Smooth._sample_noise`` loop: per batch ``x.repeat``, ``randn_like * sigma``,
  ``model(batch + noise).argmax(1)``, counts; eval mode, ``torch.no_grad``.

Images are NCHW here (PyTorch's default layout, as in the reference); callers transpose from NHWC.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


class NormalizeLayer(nn.Module):
    """(x - mean) / std per channel on NCHW images in [0, 1]."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the (possibly 1x1-conv + BN) shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class CifarResNet(nn.Module):
    """He et al. CIFAR ResNet of depth 6n+2 on 32x32 NCHW inputs (already normalised)."""

    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth={depth} is not allowed; need 6n+2")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = [BasicBlock(in_planes, planes, stride)] + [BasicBlock(planes, planes) for _ in range(n - 1)]
            layers.append(nn.Sequential(*blocks))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.avgpool(x)
        return self.fc(x.flatten(1))


def get_model(name: str, num_classes: int = 10) -> nn.Module:
    """``cifar_resnet20`` / ``cifar_resnet110`` etc. with the CIFAR-10 normalisation layer in front (CPU, float32)."""
    if not name.startswith("cifar_resnet"):
        raise ValueError(f"model {name!r} is not allowed; the torch reference has only cifar_resnet<6n+2>")
    depth = int(name[len("cifar_resnet"):])
    return nn.Sequential(NormalizeLayer(CIFAR10_MEAN, CIFAR10_STD), CifarResNet(depth, num_classes))


def count_params(model: nn.Module) -> int:
    """Number of trainable scalars (BatchNorm running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def make_train_step(model: nn.Module, *, sigma: float, learning_rate: float = 0.1, momentum: float = 0.9,
                    weight_decay: float = 1e-4):
    """Returns ``step(x, y) -> loss`` (float): one Gaussian-augmentation SGD step in train mode, in place."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum, weight_decay=weight_decay)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        noisy = x + torch.randn_like(x) * sigma
        loss = F.cross_entropy(model(noisy), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def sample_noise(model: nn.Module, x: torch.Tensor, *, num: int, batch_size: int, sigma: float,
                 num_classes: int) -> np.ndarray:
    """Class counts (num_classes,) of ``model``'s argmax over ``num`` noisy copies of one (C, H, W) image."""
    model.eval()
    counts = np.zeros(num_classes, dtype=np.int64)
    remaining = num
    with torch.no_grad():
        for _ in range(math.ceil(num / batch_size)):
            this_batch_size = min(batch_size, remaining)
            remaining -= this_batch_size
            batch = x.repeat((this_batch_size, 1, 1, 1))
            noise = torch.randn_like(batch) * sigma
            predictions = model(batch + noise).argmax(1)
            counts += np.bincount(predictions.numpy(), minlength=num_classes)
    return counts
