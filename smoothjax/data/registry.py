"""``get_source(name, split, ...)``: every data set the library reads, chosen by name from ``SOURCE_NAMES``."""

from __future__ import annotations

from smoothjax.data.digits import digits_source
from smoothjax.data.source import Source, npz_source

SOURCE_NAMES = ("cifar10", "cifar100", "digits", "image_folder", "imagenet", "imagenet32", "arrays")
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
_OPTIONS = {  # Extra keyword options each source accepts.
    "digits": (),
    "cifar10": ("transform",),
    "cifar100": ("transform",),
    "imagenet": ("transform",),
    "imagenet32": ("transform",),
    "image_folder": ("classes", "mode", "name"),
    "arrays": ("num_classes",),
}


def get_source(name: str, split: str, *, data_dir=None, path=None, **kw) -> Source:
    """Opens split ``split`` of data set ``name`` (one of ``SOURCE_NAMES``) as a random-access ``Source``.

    - ``digits``: scikit-learn's 8x8 digits, splits 'train' (1437) / 'test' (360) / 'all'; float32 (8, 8, 1).
    - ``cifar10`` / ``cifar100``: with ``path=`` an .npz (``x`` uint8 NHWC, ``y``; e.g. the lossless test sets in
      shared/data); otherwise tfds prepared in ``data_dir`` (array_record). uint8 (32, 32, 3).
    - ``imagenet``: tfds ``imagenet2012`` prepared in ``data_dir``; non-train splits are resized to 256 and
      centre-cropped to 224 (``transform='auto'``), training images keep their size (use augment 'imagenet').
    - ``imagenet32``: tfds ``imagenet_resized/32x32`` (1000 classes, 32x32; SmoothAdv's pre-training data).
    - ``image_folder``: ``path=`` (or ``data_dir=``) a directory or .zip of ``<split>/<class>/*.jpg|png``; uint8.
    - ``arrays``: ``path=`` an .npz with ``x`` (N, H, W, C) and ``y`` (N,); optional ``num_classes=``.

    Nothing is downloaded. Unknown names, options or missing/corrupt data raise a one-line ValueError.
    """
    if name not in SOURCE_NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(SOURCE_NAMES)}")
    extra = sorted(set(kw) - set(_OPTIONS[name]))
    if extra:
        allowed = ", ".join(_OPTIONS[name]) or "none"
        raise ValueError(f"option(s) {', '.join(extra)} not allowed for dataset {name!r}; allowed: {allowed}")
    if not isinstance(split, str) or not split:
        raise ValueError(f"split={split!r} is not allowed; use a split name such as 'train' or 'test'")
    if name == "digits":
        if path is not None:
            raise ValueError(f"path={path!r} is not allowed for dataset 'digits' (bundled with scikit-learn)")
        return digits_source(split)
    if name in _NUM_CLASSES and path is not None:
        if kw:
            raise ValueError(f"option(s) {', '.join(sorted(kw))} not allowed with an .npz path for {name!r}")
        return npz_source(path, split, name=name, num_classes=_NUM_CLASSES[name])
    if name in ("cifar10", "cifar100", "imagenet", "imagenet32"):
        if path is not None:
            raise ValueError(f"path={path!r} is not allowed for dataset {name!r}; it reads tfds from data_dir=")
        from smoothjax.data.tfds_source import TfdsSource

        return TfdsSource(name, split, data_dir=data_dir, **kw)
    if name == "image_folder":
        from smoothjax.data.image_folder import ImageFolderSource

        return ImageFolderSource(path if path is not None else data_dir, split, **kw)
    if path is None:
        raise ValueError("dataset 'arrays' needs path= to an .npz with x (N, H, W, C) and y (N,); or build "
                         "smoothjax.data.ArraySource(images, labels, num_classes) directly")
    return npz_source(path, split, name="arrays", num_classes=kw.get("num_classes"))
