"""CIFAR-10, CIFAR-100 and ImageNet (imagenet2012) read TF-free from a prepared TensorFlow Datasets directory.

``tfds.data_source`` gives random access to array_record files; nothing is ever downloaded here
(``download=False, try_gcs=False``). A data set that is not prepared raises a one-line ValueError saying where it
looked and the offline command that prepares it. Items are uint8 (H, W, 3) images and int labels in the order of
the prepared files (tfds's own order, which is not the original CIFAR order).
"""

from __future__ import annotations

import os

import numpy as np

from smoothjax.data.augment import imagenet_eval_transform
from smoothjax.data.source import Source

TFDS_NAMES = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "imagenet2012",
              "imagenet32": "imagenet_resized/32x32"}
IMAGENET_SIZE = 224
TRANSFORMS = ("auto", "none", "eval")


def _one_line(text: str) -> str:
    lines = [s.strip() for s in str(text).splitlines() if s.strip()]
    return lines[0] if lines else ""


def _is_train_split(split: str) -> bool:
    return str(split).strip().lower().startswith("train")


def _open(tfds_name: str, split: str, data_dir):
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ValueError(f"dataset {tfds_name!r} needs tensorflow-datasets (TF-free); install it with "
                         f"pip install 'smoothjax[data]'") from None
    try:
        return tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False, try_gcs=False)
    except Exception as error:  # noqa: BLE001 - tfds raises many types; each becomes one clear line below.
        cause = _one_line(error)
    where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets (the tfds default)"
    prepare = (f"tfds build {tfds_name} --data_dir={data_dir or '<dir>'} --file_format=array_record"
               + (" --manual_dir=<dir with the ILSVRC2012 tars>" if tfds_name == "imagenet2012" else ""))
    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir)
        prepared, where = builder.is_prepared(), builder.data_dir
        splits = sorted(builder.info.splits) if prepared else []
        fmt = getattr(getattr(builder.info, "file_format", None), "value", None)
    except Exception:  # noqa: BLE001 - a broken directory is reported like a missing one.
        prepared, splits, fmt = False, [], None
    if not prepared:
        raise ValueError(f"dataset {tfds_name!r} is not prepared in {where}; prepare it offline with `{prepare}` "
                         f"(nothing is downloaded at run time)")
    if fmt not in (None, "array_record", "parquet"):
        raise ValueError(f"dataset {tfds_name!r} in {where} is stored as {fmt}, which has no random access; "
                         f"re-prepare it with `{prepare}`")
    raise ValueError(f"split {split!r} of {tfds_name!r} in {where} cannot be read ({cause}); "
                     f"available splits: {', '.join(splits) or 'none'}")


class TfdsSource(Source):
    """One split of a prepared tfds data set (``cifar10``, ``cifar100`` or ``imagenet``), read on demand.

    ``src[i]`` returns ``(image uint8 (H, W, 3), label int)``. ``transform``: ``'eval'`` applies
    ``imagenet_eval_transform`` (shorter side 256, centre crop 224) to every item, ``'none'`` returns the stored
    image, ``'auto'`` (default) means ``'eval'`` for ImageNet splits not starting with 'train' and ``'none'``
    otherwise. ImageNet's ``image_shape`` is (224, 224, 3): the shape after the eval transform or the ``imagenet``
    augmentation (raw training images vary in size, so a loader over them needs that augmentation).
    """

    def __init__(self, name: str, split: str, *, data_dir=None, transform: str = "auto"):
        if name not in TFDS_NAMES:
            raise ValueError(f"tfds dataset {name!r} is not supported; choose one of: {', '.join(TFDS_NAMES)}")
        if transform not in TRANSFORMS:
            raise ValueError(f"transform={transform!r} is not allowed; choose one of: {', '.join(TRANSFORMS)}")
        self.name = name
        self.split = split
        self._ds = _open(TFDS_NAMES[name], split, None if data_dir is None else str(data_dir))
        features = self._ds.dataset_info.features
        self.num_classes = int(features["label"].num_classes)
        self.class_names = list(features["label"].names)
        if transform == "auto":
            transform = "eval" if name == "imagenet" and not _is_train_split(split) else "none"
        self.transform = transform
        stored = tuple(features["image"].shape)
        if name == "imagenet" or None in stored:
            channels = stored[-1] if stored and stored[-1] else 3
            self.image_shape = (IMAGENET_SIZE, IMAGENET_SIZE, int(channels))
        else:
            self.image_shape = tuple(int(d) for d in stored)
        self._len = len(self._ds)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int):
        record = self._ds[self.check_index(index)]
        image = np.asarray(record["image"])
        if image.ndim == 2:
            image = image[..., None]
        if self.transform == "eval":
            image = imagenet_eval_transform(image, size=self.image_shape[0])
        return image, int(record["label"])
