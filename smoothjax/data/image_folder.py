"""Images stored as ``<split>/<class>/<file>.jpg|jpeg|png`` in a directory or a .zip file, decoded lazily.

The split folder may sit at the top or under exactly one top-level folder (``cifar10-jpeg/train/airplane/0000.jpg``).
Classes are the sorted class-folder names of the split (or ``classes=`` given explicitly), items are sorted by
(class, file name). Each ``src[i]`` reads and decodes one file with Pillow; a .zip is opened once per process on
first use (one handle per file and process, shared by all its sources) and its reads are serialised by a lock
(decoding runs outside the lock), so a source is safe to share between threads and can be pickled to processes.
"""

from __future__ import annotations

import io
import os
import threading
import zipfile
from pathlib import Path

import numpy as np

from smoothjax.data.source import Source

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_EXPECTED = "<split>/<class>/*.jpg|png, optionally under one top-level folder"


def _one_line(error) -> str:
    return " ".join(str(error).split())


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


_HANDLES: dict[tuple, tuple[zipfile.ZipFile, threading.Lock]] = {}
_HANDLES_LOCK = threading.Lock()


def _zip_handle(path: str) -> tuple[zipfile.ZipFile, threading.Lock]:
    """This process's open ZipFile of ``path`` and the lock serialising its reads.

    One handle per (file version, process) is shared by every source on that file (train and test read the
    central directory once); a forked or unpickled copy opens its own on first use.
    """
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_mtime_ns, stat.st_size, os.getpid())
    with _HANDLES_LOCK:
        handle = _HANDLES.get(key)
        if handle is None:
            handle = _HANDLES[key] = (zipfile.ZipFile(path), threading.Lock())
        return handle


def _split_prefix(tops: set[str], has_split_under, path, split: str) -> str:
    """Returns '' or '<top>/' such that '<prefix><split>/' exists; raises a one-line ValueError otherwise."""
    if has_split_under(""):
        return ""
    found = [t for t in sorted(tops) if has_split_under(t + "/")]
    if len(found) == 1:
        return found[0] + "/"
    if found:
        raise ValueError(f"{path} holds a {split!r} folder under several top-level folders ({', '.join(found)}); "
                         f"expected {_EXPECTED}")
    shown = ", ".join(sorted(tops)[:8]) or "nothing"
    raise ValueError(f"{path} holds no {split!r} folder (top level: {shown}); expected {_EXPECTED}")


class ImageFolderSource(Source):
    """One split of an image folder or zip: ``src[i] -> (image uint8 (H, W, C), label int)``.

    ``image_shape`` is taken from the first image (C = 1 for greyscale files, else 3: every image is converted to
    the same Pillow mode, 'L' or 'RGB'; pass ``mode=`` to force one). All images of a split must share that shape
    for batching. ``class_names`` lists the classes in label order.
    """

    def __init__(self, path, split: str, *, name: str = "image_folder", classes=None, mode: str | None = None):
        if path is None:
            raise ValueError(f"dataset 'image_folder' needs path= to a directory or .zip of {_EXPECTED}")
        self.path = Path(path).expanduser()
        self.split = str(split)
        self.name = str(name)
        if self.split in ("", ".", "..") or "/" in self.split:
            raise ValueError(f"split {split!r} is not allowed for image_folder; use a folder name like 'train'")
        if self.path.is_dir():
            self._zip_path = None
            files = self._list_dir()
        elif self.path.is_file():
            if not zipfile.is_zipfile(self.path):
                raise ValueError(f"{self.path} is neither a directory nor a zip file; expected a directory or .zip "
                                 f"of {_EXPECTED}")
            self._zip_path = str(self.path)
            files = self._list_zip()
        else:
            raise ValueError(f"{self.path} does not exist; expected a directory or .zip of {_EXPECTED}")
        found = sorted({c for c, _ in files})
        if classes is None:
            self.class_names = found
        else:
            self.class_names = [str(c) for c in classes]
            extra = sorted(set(found) - set(self.class_names))
            if extra:
                raise ValueError(f"{self.path} split {split!r} has class folders {extra} that are not in classes=; "
                                 f"allowed: {self.class_names}")
        if not files:
            raise ValueError(f"{self.path} split {split!r} holds no .jpg/.jpeg/.png images; expected {_EXPECTED}")
        index = {c: k for k, c in enumerate(self.class_names)}
        files.sort(key=lambda cf: (index[cf[0]], cf[1]))
        self._files = [f for _, f in files]
        self._labels = np.array([index[c] for c, _ in files], np.int32)
        self.num_classes = len(self.class_names)
        first = self._decode(0, None)
        if mode is None:
            mode = "L" if first.mode in ("1", "L", "I", "I;16", "F") else "RGB"
        if mode not in ("L", "RGB"):
            raise ValueError(f"mode={mode!r} is not allowed; use 'L' (greyscale) or 'RGB'")
        self.mode = mode
        w, h = first.size
        self.image_shape = (h, w, 1 if mode == "L" else 3)

    # Listing -----------------------------------------------------------------------------------------------------
    def _list_dir(self) -> list[tuple[str, str]]:
        tops = {p.name for p in self.path.iterdir() if p.is_dir()}
        prefix = _split_prefix(tops, lambda pre: (self.path / pre / self.split).is_dir(), self.path, self.split)
        root = self.path / prefix / self.split
        files = []
        for cls in sorted(p for p in root.iterdir() if p.is_dir()):
            files += [(cls.name, str(f)) for f in sorted(cls.iterdir()) if f.is_file() and _is_image(f.name)]
        return files

    def _list_zip(self) -> list[tuple[str, str]]:
        try:
            zf, lock = _zip_handle(self._zip_path)
            with lock:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"{self.path} is not a readable zip file ({_one_line(e)}); expected a .zip of "
                             f"{_EXPECTED}") from None
        tops = {n.split("/", 1)[0] for n in names if "/" in n}
        dirs = {n.rsplit("/", 1)[0] + "/" for n in names if "/" in n}
        prefix = _split_prefix(tops, lambda pre: any(d.startswith(pre + self.split + "/") for d in dirs),
                               self.path, self.split)
        start = prefix + self.split + "/"
        files = []
        for n in names:
            if n.startswith(start):
                parts = n[len(start):].split("/")
                if len(parts) == 2 and parts[0] and _is_image(parts[1]):
                    files.append((parts[0], n))
        return files

    # Reading -----------------------------------------------------------------------------------------------------
    def _read(self, i: int) -> bytes:
        if self._zip_path is None:
            with open(self._files[i], "rb") as f:
                return f.read()
        zf, lock = _zip_handle(self._zip_path)
        try:
            with lock:
                return zf.read(self._files[i])
        except (zipfile.BadZipFile, OSError, EOFError) as e:  # e.g. a damaged member: "Bad CRC-32"
            raise ValueError(f"{self.path}: cannot read {self._files[i]} ({_one_line(e)}); the zip is "
                             "damaged") from None

    def _decode(self, i: int, mode: str | None):
        from PIL import Image

        data = self._read(i)
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except Exception as e:  # noqa: BLE001 - Pillow raises several types for a broken file.
            raise ValueError(f"{self.path}: cannot decode {self._files[i]} ({_one_line(e)}); expected a JPEG or PNG "
                             f"image") from None
        return image if mode is None else image.convert(mode)

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index: int):
        i = self.check_index(index)
        image = np.asarray(self._decode(i, self.mode), dtype=np.uint8)
        if image.ndim == 2:
            image = image[..., None]
        return image, int(self._labels[i])

    @property
    def labels(self) -> np.ndarray:
        """Labels of all items in index order, int32 (N,), without decoding any image."""
        return self._labels
