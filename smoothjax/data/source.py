"""The data-source contract shared by every reader, and the in-memory ``ArraySource``.

A source is a random-access, read-only view of one split: ``len(src)``, ``src[i] -> (image, label)`` and
``src.get_batch(indices)``, plus ``name``, ``num_classes`` and ``image_shape`` (H, W, C). Items are either uint8
(0..255) or float32 in [0, 1]; each source documents which. ``as_float_image`` is the single conversion every
consumer (loader, eval batches) applies, so downstream code always sees float32 in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def as_float_image(image) -> np.ndarray:
    """Converts one image or a batch to float32 in [0, 1].

    uint8 input is divided by 255 (exact for every 0..255 value up to float32 rounding); floating input is taken to
    be in [0, 1] already and is only cast to float32. Any other dtype raises a one-line ValueError.
    """
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) * np.float32(1.0 / 255.0)
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32, copy=False)
    raise ValueError(f"image dtype {image.dtype} is not allowed; use uint8 (0..255) or float in [0, 1]")


class Source:
    """Base class of every data source: one split, random access by integer index.

    Subclasses set ``name``, ``num_classes``, ``image_shape`` and implement ``__len__`` and ``__getitem__``
    (returning ``(image (H, W, C) uint8 or float32 in [0, 1], label int)``). ``in_memory`` tells the loader that
    ``get_batch`` is a cheap vectorised gather (no per-item decoding worth spreading over threads).
    """

    name: str = "source"
    num_classes: int = 0
    image_shape: tuple = ()
    in_memory: bool = False

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int):
        raise NotImplementedError

    def get_batch(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(images float32 (k, H, W, C) in [0, 1], labels int32 (k,))`` for ``indices`` (k,), in order.

        This generic version decodes item by item; in-memory sources override it with a single gather.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        images = np.empty((len(indices),) + tuple(self.image_shape), np.float32)
        labels = np.empty((len(indices),), np.int32)
        for k, i in enumerate(indices):
            image, label = self[int(i)]
            images[k] = as_float_image(image)
            labels[k] = label
        return images, labels

    def check_index(self, index) -> int:
        """Returns ``index`` as a non-negative int below ``len(self)`` (negative counts from the end)."""
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} is out of range for {self.name} with {n} items")
        return i

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, len={len(self)}, num_classes={self.num_classes}, "
                f"image_shape={tuple(self.image_shape)})")


class ArraySource(Source):
    """A split held in memory as arrays.

    ``images``: (N, H, W, C) uint8 (0..255) or float (taken to be in [0, 1]); ``labels``: (N,) integers in
    [0, num_classes). ``src[i]`` returns the stored image unchanged (uint8 or float32) and an int label;
    ``get_batch`` is one vectorised gather returning float32 in [0, 1] and int32 labels.
    """

    in_memory = True

    def __init__(self, images, labels, num_classes: int, name: str = "arrays"):
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim != 4:
            raise ValueError(f"images of shape {images.shape} are not allowed; use (N, H, W, C)")
        if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"images of dtype {images.dtype} are not allowed; use uint8 or float in [0, 1]")
        if np.issubdtype(images.dtype, np.floating):
            images = images.astype(np.float32, copy=False)
        if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels of shape {labels.shape} and dtype {labels.dtype} are not allowed; use "
                             f"integers of shape ({len(images)},)")
        num_classes = int(num_classes)
        if num_classes < 1 or (len(labels) and (labels.min() < 0 or labels.max() >= num_classes)):
            raise ValueError(f"num_classes={num_classes} is not allowed for labels in "
                             f"[{labels.min() if len(labels) else 0}, {labels.max() if len(labels) else 0}]; "
                             f"labels must lie in [0, num_classes)")
        self.images = images
        self.labels = labels.astype(np.int32)
        self.num_classes = num_classes
        self.name = str(name)
        self.image_shape = tuple(int(d) for d in images.shape[1:])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        i = self.check_index(index)
        return self.images[i], int(self.labels[i])

    def get_batch(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(images float32 (k, H, W, C) in [0, 1], labels int32 (k,))``: one gather, no per-item loop."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        return as_float_image(self.images[indices]), self.labels[indices]


_SPLIT_WORDS = {"train": "train", "test": "test", "validation": "validation", "val": "validation",
                "valid": "validation"}


def npz_source(path, split: str, *, name: str, num_classes: int | None = None) -> ArraySource:
    """Loads one split from an .npz file holding ``x`` (N, H, W, C) uint8 and ``y`` (N,) integer labels.

    ``path`` is the file itself, a file name containing ``{split}`` (formatted with ``split``), or a directory
    holding ``<name>-<split>.npz``. As a guard against training on a test set, a file whose name names another
    split (words train / test / val / validation, e.g. ``cifar10-test.npz`` when ``split='train'``) is refused.
    ``num_classes`` defaults to max(y) + 1.
    """
    path = str(path)
    if "{split}" in path:
        path = path.replace("{split}", split)
    p = Path(path)
    if p.is_dir():
        p = p / f"{name}-{split}.npz"
    if not p.is_file():
        raise ValueError(f"npz file {p} does not exist; expected an .npz with x (N, H, W, C) uint8 and y (N,) for "
                         f"{name} split {split!r}")
    words = p.stem.lower().replace("_", "-").replace(".", "-").split("-")
    named = {_SPLIT_WORDS[w] for w in words if w in _SPLIT_WORDS}
    wanted = _SPLIT_WORDS.get(split.lower())
    if wanted and named and wanted not in named:
        raise ValueError(f"npz file {p} holds split {sorted(named)[0]!r}, not the requested split {split!r}; pass "
                         f"the file of that split (a path with '{{split}}' in it works for every split)")
    try:
        with np.load(p, allow_pickle=False) as f:
            keys = set(f.files)
            if not {"x", "y"} <= keys:
                raise ValueError(f"npz file {p} has arrays {sorted(keys)}; expected x (N, H, W, C) uint8 and y (N,)")
            x, y = f["x"], f["y"]
    except (OSError, EOFError) as e:
        raise ValueError(f"npz file {p} cannot be read ({type(e).__name__}); expected an .npz with x and y") from None
    if x.ndim == 3:  # Greyscale (N, H, W).
        x = x[..., None]
    n_cls = int(num_classes) if num_classes else int(y.max()) + 1
    return ArraySource(x, y.astype(np.int64), n_cls, name=name)
