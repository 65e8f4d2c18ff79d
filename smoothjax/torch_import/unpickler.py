"""Reads files written by ``torch.save`` into NumPy arrays, without PyTorch and without running pickled code.

Both serialisation formats are understood: the zip archive of PyTorch >= 1.6 (``<name>/data.pkl`` plus one
``<name>/data/<key>`` entry of raw bytes per storage) and the legacy single stream of earlier versions (pickled
magic number, protocol version and system info, the object pickle, the pickled list of storage keys, then each
storage as an int64 element count followed by its raw bytes).

Pickles are read by an unpickler that resolves only an allow-list of globals, each replaced by a local stand-in:
tensor rebuild functions, storage types, ``OrderedDict``, sets, NumPy scalars and ``argparse.Namespace`` (inert
attribute holders). Any other global -- ``os.system``, ``builtins.eval``, a model class -- raises
``UnsafeCheckpointError`` before anything is called, so a crafted file cannot run code. Tensors are rebuilt as
NumPy copies after bounds-checking their offset, shape and strides against the storage they view.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}


class UnsafeCheckpointError(ValueError):
    """A pickle asked for something a checkpoint never needs (a function, class or module outside the allow-list)."""


class _Sealed:
    """Objects a pickle can reach are sealed: its BUILD opcode cannot set attributes on them (no ``__dict__``,
    ``__setattr__`` refuses), so a crafted stream cannot retarget a tensor view or poison the allow-list."""

    __slots__ = ()

    def __setattr__(self, name, value):
        raise UnsafeCheckpointError(f"pickle tried to set attribute {name!r} on {type(self).__name__}")

    def _init(self, **fields):
        for name, value in fields.items():
            object.__setattr__(self, name, value)


class _StorageType(_Sealed):
    """Stand-in for ``torch.FloatStorage`` and friends: only carries the element dtype."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str):
        self._init(name=name, dtype=np.dtype(_STORAGE_DTYPES[name]))


class _Storage(_Sealed):
    """A flat typed buffer, filled after the object pickle has been read (``data`` is None until then)."""

    __slots__ = ("key", "dtype", "numel", "root", "offset", "data")

    def __init__(self, key: str, dtype: np.dtype, numel: int, root: "_Storage | None" = None, offset: int = 0):
        if not (isinstance(offset, int) and isinstance(numel, int) and offset >= 0 and numel >= 0):
            raise ValueError(f"invalid storage view offset/size {offset!r}/{numel!r}")
        self._init(key=key, dtype=dtype, numel=numel, root=root, offset=offset, data=None)

    def array(self) -> np.ndarray:
        if self.root is not None:
            return self.root.array()[self.offset:self.offset + self.numel]
        if self.data is None:
            raise ValueError(f"storage {self.key!r} is referenced but its data is missing (truncated file?)")
        return self.data


class _TensorRef(_Sealed):
    """A tensor described by the pickle: a view (offset, size, stride in elements) of a storage."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, _Storage):
            raise ValueError(f"tensor rebuilt from {type(storage).__name__}, not from a storage")
        ints = (offset, *size, *stride)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints) or len(size) != len(
                stride):
            raise ValueError(f"tensor with invalid offset/size/stride {offset}/{tuple(size)}/{tuple(stride)}")
        self._init(storage=storage, offset=offset, size=tuple(size), stride=tuple(stride))

    def array(self) -> np.ndarray:
        flat = self.storage.array()
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, flat.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= flat.size:
            raise ValueError(f"tensor of size {self.size} (offset {self.offset}, stride {self.stride}) reads past "
                             f"the end of storage {self.storage.key!r} ({flat.size} elements)")
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(flat[self.offset:], self.size, [s * itemsize for s in self.stride],
                                               writeable=False)
        return np.array(view)


class _FrozenClass(type):
    def __setattr__(cls, name, value):
        raise UnsafeCheckpointError(f"pickle tried to set attribute {name!r} on a class")


class _Namespace(metaclass=_FrozenClass):
    """Inert stand-in for ``argparse.Namespace`` (training arguments some checkpoints carry)."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    return data


class _Callable(_Sealed):
    """An allow-listed function, sealed so that the pickle cannot change its defaults."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self._init(fn=fn)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def _rebuild_from_type(func, new_type, args, state):
    if func is not _REBUILD_TENSOR or new_type is not _TENSOR_TYPE:
        raise UnsafeCheckpointError("_rebuild_from_type_v2 with something other than a plain tensor")
    return func(*args)


def _numpy_dtype(name, align=False, copy=False):
    if not isinstance(name, str):
        raise UnsafeCheckpointError(f"NumPy dtype built from a {type(name).__name__}, not a type code")
    try:
        dtype = np.dtype(name)
    except TypeError:
        raise ValueError(f"invalid NumPy dtype {name!r} in pickle") from None
    if dtype.kind not in "biufc" or dtype.fields is not None:
        raise UnsafeCheckpointError(f"NumPy dtype {dtype} is not a plain numeric type")
    return dtype


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or not isinstance(data, (bytes, bytearray)):
        raise ValueError("invalid NumPy scalar in pickle")
    clean = _numpy_dtype(dtype.str)  # A fresh dtype: whatever BUILD did to the pickled one does not matter.
    if clean.itemsize != len(data):
        raise ValueError(f"NumPy scalar of {clean} with {len(data)} bytes")
    return np.frombuffer(bytes(data), clean, count=1)[0]


def _codecs_encode(text, encoding="utf-8"):
    if not isinstance(text, str) or encoding != "latin1":
        raise UnsafeCheckpointError("_codecs.encode used for something other than pickled bytes")
    return text.encode("latin1")


_TENSOR_TYPE = object()  # Marks torch.Tensor / torch.nn.Parameter in _rebuild_from_type_v2 calls.

_REBUILD_TENSOR = _Callable(_rebuild_tensor)
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _Callable(_codecs_encode),
    ("argparse", "Namespace"): _Namespace,
    ("torch._utils", "_rebuild_tensor"): _REBUILD_TENSOR,
    ("torch._utils", "_rebuild_tensor_v2"): _REBUILD_TENSOR,
    ("torch._utils", "_rebuild_parameter"): _Callable(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Callable(_rebuild_parameter),
    ("torch._tensor", "_rebuild_from_type_v2"): _Callable(_rebuild_from_type),
    ("torch", "Tensor"): _TENSOR_TYPE,
    ("torch.nn.parameter", "Parameter"): _TENSOR_TYPE,
    **{(module, "scalar"): _Callable(_numpy_scalar) for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "dtype"): _Callable(_numpy_dtype),
    **{(module, name): _StorageType(name) for name in _STORAGE_DTYPES for module in ("torch", "torch.storage")},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only ``_ALLOWED`` globals; turns ``('storage', ...)`` persistent ids into shared ``_Storage``s."""

    def __init__(self, file, storages: dict):
        super().__init__(file, encoding="utf-8")
        self._storages = storages

    def find_class(self, module, name):
        module = {"__builtin__": "builtins"}.get(module, module)  # Protocol <= 2 pickles use Python 2 names.
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            hint = " (a TorchScript archive from torch.jit.save, not a checkpoint)" if module.startswith(
                "__torch__") else ""
            raise UnsafeCheckpointError(
                f"refusing to unpickle {module}.{name}{hint}: a checkpoint only needs tensors, storages, dicts, "
                f"lists, numbers and strings, so this file may try to run code") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")):
            raise ValueError(f"unknown persistent id {str(pid)[:80]} in pickle")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise ValueError(f"invalid storage reference {str(pid)[:80]} in pickle")
        key = key.decode("ascii") if isinstance(key, bytes) else str(key)
        storage = self._storages.setdefault(key, _Storage(key, storage_type.dtype, numel))
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return storage
        view_key, offset, view_numel = view
        return self._storages.setdefault(str(view_key), _Storage(str(view_key), storage.dtype, view_numel,
                                                                 root=storage, offset=offset))


def _unpickle(file, storages: dict):
    return _RestrictedUnpickler(file, storages).load()


def _materialize(obj, memo: dict):
    """Replaces every ``_TensorRef`` in nested dicts/lists/tuples by a NumPy array (cycles are preserved)."""
    if isinstance(obj, _TensorRef):
        return obj.array()
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, dict):
        out = type(obj)() if type(obj) in (dict, collections.OrderedDict) else {}
        memo[id(obj)] = out
        for k, v in dict.items(obj):  # Unbound: an instance attribute 'items' set by BUILD is never called.
            out[k] = _materialize(v, memo)
        return out
    if isinstance(obj, list):
        out = []
        memo[id(obj)] = out
        out.extend(_materialize(v, memo) for v in list.__iter__(obj))
        return out
    if isinstance(obj, tuple):
        return tuple(_materialize(v, memo) for v in obj)
    if isinstance(obj, _Namespace):
        return {k: _materialize(v, memo) for k, v in dict.items(object.__getattribute__(obj, "__dict__"))}
    return obj


def _read_zip(raw: bytes, name: str):
    archive = zipfile.ZipFile(io.BytesIO(raw))
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise ValueError(f"{name} is a zip archive without exactly one <name>/data.pkl: not a torch.save checkpoint")
    prefix = pickles[0][: -len("data.pkl")]
    names = set(archive.namelist())
    big_endian = prefix + "byteorder" in names and archive.read(prefix + "byteorder").strip() == b"big"
    storages: dict = {}
    obj = _unpickle(io.BytesIO(archive.read(pickles[0])), storages)
    for key, storage in storages.items():
        if storage.root is not None:
            continue
        entry = f"{prefix}data/{key}"
        if entry not in names:
            raise ValueError(f"{name}: storage {key!r} is referenced but {entry} is missing from the archive")
        _fill(storage, archive.read(entry), big_endian, name)
    return obj


def _fill(storage: _Storage, data: bytes, big_endian: bool, name: str) -> None:
    need = storage.numel * storage.dtype.itemsize
    if len(data) < need:
        raise ValueError(f"{name} is truncated: storage {storage.key!r} needs {need} bytes, found {len(data)}")
    dtype = storage.dtype.newbyteorder(">") if big_endian and storage.dtype.itemsize > 1 else storage.dtype
    object.__setattr__(storage, "data", np.frombuffer(data[:need], dtype).astype(storage.dtype))


def _read_legacy(raw: bytes, name: str):
    stream = io.BytesIO(raw)
    if _unpickle(stream, {}) != LEGACY_MAGIC_NUMBER:
        raise ValueError(f"{name} is a pickle but not a PyTorch checkpoint (no torch.save magic number)")
    version = _unpickle(stream, {})
    if version != LEGACY_PROTOCOL_VERSION:
        raise ValueError(f"{name}: unsupported legacy torch.save protocol version {version!r}")
    sys_info = _unpickle(stream, {})
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    storages: dict = {}
    obj = _unpickle(stream, storages)
    keys = _unpickle(stream, {})
    if not isinstance(keys, list) or not all(isinstance(k, (str, bytes)) for k in keys):
        raise ValueError(f"{name}: storage key list is corrupt")
    for key in keys:
        key = key.decode("ascii") if isinstance(key, bytes) else key
        if key not in storages:
            raise ValueError(f"{name}: storage {key!r} has data but no tensor refers to it (corrupt file)")
        header = stream.read(8)
        if len(header) < 8:
            raise ValueError(f"{name} is truncated: the data of storage {key!r} is missing")
        (count,) = struct.unpack("<q" if little else ">q", header)
        storage = storages[key]
        if count != storage.numel:
            raise ValueError(f"{name}: storage {key!r} holds {count} elements, the pickle says {storage.numel}")
        _fill(storage, stream.read(count * storage.dtype.itemsize), not little, name)
    return obj


def load_checkpoint(path) -> object:
    """Reads a ``torch.save`` file (zip or legacy format) with PyTorch's tensors as NumPy arrays.

    Args:
      path: the file (``.pth``, ``.pth.tar``, ``.pt``).

    Returns:
      The saved object (typically a dict holding a ``state_dict``) with every tensor replaced by a C-contiguous
      NumPy array of the same shape and dtype (bfloat16 as ``ml_dtypes.bfloat16``); dicts, lists, numbers and
      strings as saved, ``argparse.Namespace`` as a dict.

    Raises:
      UnsafeCheckpointError (a ValueError): the pickle references a global outside the allow-list; nothing
        from the file was executed.
      ValueError: the file is missing, not a PyTorch checkpoint, truncated or corrupt (one line naming why).
    """
    path = Path(path)
    name = str(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read checkpoint {name}: {e.strerror or e}") from None
    try:
        if raw[:4] == b"PK\x03\x04":
            obj = _read_zip(raw, name)
        elif raw[:1] == b"\x80":
            obj = _read_legacy(raw, name)
        elif tarfile.is_tarfile(path):
            raise ValueError(f"{name} is a tar archive: the pre-0.4 PyTorch tar format is not supported")
        else:
            raise ValueError(f"{name} is not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy "
                             f"torch.save pickle)")
        return _materialize(obj, {})
    except ValueError:
        raise
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"{name} is truncated or corrupt ({type(e).__name__}: {_first_line(e)})") from None
    except Exception as e:  # Any other failure inside the unpickler means a malformed stream.
        raise ValueError(f"{name} is corrupt: its pickle is malformed ({type(e).__name__}: {_first_line(e)})") \
            from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else "no details"


__all__ = ["UnsafeCheckpointError", "load_checkpoint"]
