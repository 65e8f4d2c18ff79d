"""What a certification log was computed on, independent of where the data lies: a hash of the examples themselves."""

from __future__ import annotations

import hashlib

import numpy as np

_CHUNK = 256


def fingerprint(src, indices) -> str:
    """``'sha256:<hex>'`` of the labels and pixels of ``src``'s examples at ``indices``, in that order.

    Args:
      src: a ``smoothjax.data.Source``.
      indices: (k,) integer indices of the examples a job uses (e.g. every 20th test image).

    The hash covers the int32 labels and the float32 images in [0, 1] exactly as ``src.get_batch`` returns them,
    with their shapes, so the same examples give the same fingerprint from an .npz, a folder or tfds, on any
    machine and at any path, and one changed pixel or label changes it. Reads each example once, in chunks.
    """
    digest = hashlib.sha256()
    indices = np.asarray(indices, np.int64).reshape(-1)
    digest.update(np.asarray([len(indices), *src.image_shape], np.int64).tobytes())
    for start in range(0, len(indices), _CHUNK):
        images, labels = src.get_batch(indices[start:start + _CHUNK])
        digest.update(np.ascontiguousarray(labels, np.int32).tobytes())
        digest.update(np.ascontiguousarray(images, np.float32).tobytes())
    return f"sha256:{digest.hexdigest()}"
