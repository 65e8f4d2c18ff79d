"""Training augmentations and the ImageNet evaluation transform, on single NumPy images.

Every augmentation has the signature ``fn(image, rng) -> image``: ``image`` float32 (H, W, C) in [0, 1], ``rng`` a
``np.random.Generator`` that is the only source of randomness (so an augmented batch is a pure function of the
generators the loader derives from (seed, step, position)). Outputs stay float32 in [0, 1]. Select one by name
with ``get_augment(name, image_shape)``:

- ``none``: identity.
- ``cifar``: zero-pad 4 pixels on every side, take a uniformly random crop of the original size, flip
  horizontally with probability 1/2 (Cohen et al.'s ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip``).
- ``imagenet``: random-resized crop (area fraction U(0.08, 1), log-uniform aspect ratio in [3/4, 4/3], 10 tries,
  then a centred fallback) resized bilinearly to ``image_shape[:2]``, then a horizontal flip with probability 1/2.
  Evaluation uses ``imagenet_eval_transform`` (shorter side to 256, centre crop 224).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np

AUGMENT_NAMES = ("none", "cifar", "imagenet")


def identity(image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Returns ``image`` unchanged (the ``none`` augmentation)."""
    return image


def random_crop_flip(image: np.ndarray, rng: np.random.Generator, *, pad: int = 4) -> np.ndarray:
    """Zero-pads ``pad`` pixels on each side, crops back to (H, W) at a uniform offset, flips with prob. 1/2.

    ``image`` (H, W, C); the row and column offsets into the padded image are independent uniform integers in
    [0, 2 * pad], and the flip reverses the width axis. Returns a new (H, W, C) array of the input dtype.
    """
    h, w = image.shape[:2]
    top, left = (int(v) for v in rng.integers(0, 2 * pad + 1, size=2))
    flip = rng.random() < 0.5
    padded = np.zeros((h + 2 * pad, w + 2 * pad) + image.shape[2:], image.dtype)
    padded[pad:pad + h, pad:pad + w] = image
    out = padded[top:top + h, left:left + w]
    return np.ascontiguousarray(out[:, ::-1] if flip else out)


def resize(image: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Bilinear resize (Pillow, antialiased when shrinking) of ``image`` (H, W, C) to ``size`` = (height, width).

    ``box`` = (top, left, height, width) resizes only that window. uint8 images go through Pillow's 8-bit path
    (RGB / L) and stay uint8; other images are resized per channel in Pillow's 32-bit float mode (-> float32).
    """
    from PIL import Image

    out_h, out_w = int(size[0]), int(size[1])
    h, w, c = image.shape
    pil_box = None if box is None else (box[1], box[0], box[1] + box[3], box[0] + box[2])
    if image.dtype == np.uint8 and c in (1, 3):
        pil = Image.fromarray(np.ascontiguousarray(image[..., 0] if c == 1 else image))
        out = np.asarray(pil.resize((out_w, out_h), Image.BILINEAR, box=pil_box))
        return out.reshape(out_h, out_w, c)
    image = np.asarray(image, np.float32)
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., k])).resize(
        (out_w, out_h), Image.BILINEAR, box=pil_box)) for k in range(c)]
    return np.stack(chans, axis=-1).astype(np.float32, copy=False)


def sample_resized_crop_box(height: int, width: int, rng: np.random.Generator, *, scale=(0.08, 1.0),
                            ratio=(3 / 4, 4 / 3), attempts: int = 10) -> tuple[int, int, int, int]:
    """Draws a crop window (top, left, h, w) inside a (height, width) image.

    Up to ``attempts`` times: area fraction ~ U(scale), aspect ratio w/h log-uniform in ``ratio``, sides rounded;
    the first window that fits is placed uniformly. Otherwise the largest centred window whose aspect ratio is
    clamped into ``ratio``. Guarantee: 1 <= h <= height, 1 <= w <= width, window inside the image.
    """
    area = height * width
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * rng.uniform(scale[0], scale[1])
        r = math.exp(rng.uniform(lo, hi))
        w = int(round(math.sqrt(target * r)))
        h = int(round(math.sqrt(target / r)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, max(1, min(height, int(round(width / ratio[0]))))
    elif in_ratio > ratio[1]:
        h, w = height, max(1, min(width, int(round(height * ratio[1]))))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop_flip(image: np.ndarray, rng: np.random.Generator, *, size: tuple[int, int],
                             scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
    """ImageNet training augmentation: a ``sample_resized_crop_box`` window resized to ``size`` (h, w), then a
    horizontal flip with probability 1/2. ``image`` (H, W, C) float32 in [0, 1] -> (size[0], size[1], C) float32,
    values within the input's [min, max] (bilinear weights are convex)."""
    box = sample_resized_crop_box(image.shape[0], image.shape[1], rng, scale=scale, ratio=ratio)
    out = resize(image, size, box=box)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out, dtype=np.float32)


def imagenet_eval_transform(image: np.ndarray, *, size: int = 224, resize_to: int = 256) -> np.ndarray:
    """Resizes the shorter side of ``image`` (H, W, C) to ``resize_to`` (longer side scaled to keep the aspect ratio,
    truncated to an int) and takes the centred ``size`` x ``size`` crop. Deterministic; keeps uint8 as uint8 and
    returns float32 for floating input."""
    h, w = image.shape[:2]
    if h <= w:
        new_h, new_w = resize_to, int(resize_to * w / h)
    else:
        new_h, new_w = int(resize_to * h / w), resize_to
    if min(new_h, new_w) < size:
        raise ValueError(f"resize_to={resize_to} is smaller than size={size}; resize_to must be >= size")
    out = resize(image, (new_h, new_w)) if (new_h, new_w) != (h, w) else image
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return np.ascontiguousarray(out[top:top + size, left:left + size])


def get_augment(name: str, image_shape) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    """The training augmentation called ``name`` (one of ``AUGMENT_NAMES``) for images of ``image_shape`` (H, W, C).

    Returns ``fn(image float32 (H', W', C) in [0, 1], rng) -> float32 (H, W, C) in [0, 1]``; ``cifar`` keeps the
    input size, ``imagenet`` outputs ``image_shape[:2]`` whatever the input size, ``none`` is ``identity``.
    """
    if name not in AUGMENT_NAMES:
        raise ValueError(f"unknown augmentation {name!r}; choose one of: {', '.join(AUGMENT_NAMES)}")
    shape = tuple(image_shape) if image_shape is not None else ()
    if len(shape) != 3 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
        raise ValueError(f"image_shape={image_shape!r} is not allowed; use (H, W, C) with positive ints")
    if name == "none":
        return identity
    if name == "cifar":
        return functools.partial(random_crop_flip, pad=4)
    return functools.partial(random_resized_crop_flip, size=(int(shape[0]), int(shape[1])))
