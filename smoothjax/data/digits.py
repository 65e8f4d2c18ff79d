"""scikit-learn's bundled 8x8 handwritten digits: the embedded default data set (nothing to download).

The 1,797 images (pixel values 0..16) are divided by 16 to float32 in [0, 1] and shaped (8, 8, 1). The split is
fixed: ``np.random.default_rng(0).permutation(1797)``; its first 1,437 entries are ``train``, the last 360 are
``test`` (in that permuted order). ``all`` is the whole set in scikit-learn's order.
"""

from __future__ import annotations

import functools

import numpy as np

from smoothjax.data.source import ArraySource

NUM_EXAMPLES = 1797
NUM_TRAIN = 1437
SPLIT_SEED = 0
SPLITS = ("train", "test", "all")


@functools.lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ValueError("dataset 'digits' needs scikit-learn; install it with pip install scikit-learn") from None
    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / np.float32(16.0))[..., None]
    images.setflags(write=False)
    labels = bunch.target.astype(np.int64)
    labels.setflags(write=False)
    return images, labels


def split_indices(split: str) -> np.ndarray:
    """Indices into scikit-learn's digit order that make up ``split`` ('train' 1437, 'test' 360, 'all' 1797)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for dataset 'digits'; choose one of: {', '.join(SPLITS)}")
    if split == "all":
        return np.arange(NUM_EXAMPLES)
    perm = np.random.default_rng(SPLIT_SEED).permutation(NUM_EXAMPLES)
    return perm[:NUM_TRAIN] if split == "train" else perm[NUM_TRAIN:]


def digits_source(split: str) -> ArraySource:
    """The ``split`` of the digits as an in-memory source: float32 (8, 8, 1) images in [0, 1], 10 classes."""
    idx = split_indices(split)
    images, labels = _load()
    return ArraySource(images[idx], labels[idx], 10, name="digits")
