"""Read PyTorch state dicts without torch.

Only the *legacy* (pre-zip) serialisation is supported: a run of pickles (magic number,
protocol version, system info, the object, the storage keys) followed by the raw bytes of
every storage. The unpickler is restricted: it knows the handful of globals a plain state
dict needs and refuses every other one, so a tampered model file can never run code.
"""

from __future__ import annotations

import collections
import functools
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

_MAGIC = 0x1950A86A20F9469CFC6C
_PROTOCOL = 1001

_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class WeightsError(ValueError):
    """The weights file is not a legacy PyTorch state dict we are willing to read."""


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype[Any]


class _Storage:
    def __init__(self, dtype: np.dtype[Any], numel: int) -> None:
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray[Any, Any] | None = None


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialise(self) -> np.ndarray[Any, Any]:
        if self.storage.data is None:
            raise WeightsError("tensor refers to a storage that the file does not contain")
        base = self.storage.data
        itemsize = base.dtype.itemsize
        needed = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=False)) + 1
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, dtype=base.dtype)
        if self.offset < 0 or needed > base.size or any(s < 0 for s in self.stride):
            raise WeightsError("tensor view lies outside its storage")
        view = np.lib.stride_tricks.as_strided(
            base[self.offset :],
            shape=self.size,
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view)


def _rebuild_tensor(storage: _Storage, offset: int, size: Any, stride: Any, *_: Any) -> _TensorRef:
    if not isinstance(storage, _Storage):
        raise WeightsError("tensor rebuilt from something that is not a storage")
    return _TensorRef(storage, int(offset), tuple(int(n) for n in size), tuple(int(s) for s in stride))


def _ordered_dict(*args: Any) -> collections.OrderedDict[Any, Any]:
    return collections.OrderedDict(*args)


_FUNCTIONS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
}


def _allowed(module: str, name: str) -> Any:
    """A *fresh* object for each global the file names: pickle's BUILD opcode can set
    attributes on whatever a GLOBAL returned (even a frozen dataclass, through its __dict__),
    so a shared object would let one hostile file break every later load in the process."""
    if module == "torch" and name in _STORAGE_DTYPES:
        return _StorageType(_STORAGE_DTYPES[name])
    fn = _FUNCTIONS.get((module, name))
    if fn is None:
        raise WeightsError(f"weights file refers to {module}.{name}, which is not allowed")
    return functools.partial(fn)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        return _allowed(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise WeightsError(f"unsupported persistent id in weights file: {pid!r:.60}")
        _, storage_type, key, _location, numel, view = pid
        if not isinstance(storage_type, _StorageType) or view is not None:
            raise WeightsError("unsupported storage in weights file")
        key = str(key)
        if key not in self._storages:
            self._storages[key] = _Storage(storage_type.dtype, int(numel))
        return self._storages[key]


def _load_pickle(f: IO[bytes], storages: dict[str, _Storage]) -> Any:
    try:
        return _RestrictedUnpickler(f, storages).load()
    except WeightsError:
        raise
    except Exception as exc:  # any malformed pickle: EOFError, UnpicklingError, TypeError...
        raise WeightsError(f"malformed weights file: {exc}") from exc


def _read_storages(f: IO[bytes], keys: Any, storages: dict[str, _Storage]) -> None:
    if not isinstance(keys, list):
        raise WeightsError("malformed weights file: storage keys are not a list")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise WeightsError(f"weights file lists unknown storage {key!r}")
        header = f.read(8)
        if len(header) != 8:
            raise WeightsError("weights file is truncated")
        (numel,) = struct.unpack("<q", header)
        nbytes = numel * storage.dtype.itemsize
        raw = f.read(nbytes)
        if numel != storage.numel or len(raw) != nbytes:
            raise WeightsError("weights file is truncated or its storage sizes disagree")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray[Any, Any]]:
    """Read a legacy-format PyTorch state dict into numpy arrays, refusing any code."""
    with open(path, "rb") as raw:
        f = io.BufferedReader(raw, buffer_size=1 << 20)
        storages: dict[str, _Storage] = {}
        if f.peek(2)[:2] == b"PK":
            raise WeightsError("zip-format PyTorch files are not supported; save with the legacy format")
        if _load_pickle(f, storages) != _MAGIC or _load_pickle(f, storages) != _PROTOCOL:
            raise WeightsError("not a legacy PyTorch weights file (bad magic number)")
        _load_pickle(f, storages)  # system info: endianness and type sizes, all little-endian here
        obj = _load_pickle(f, storages)
        _read_storages(f, _load_pickle(f, storages), storages)
    if not isinstance(obj, dict):
        raise WeightsError("weights file does not hold a state dict")
    out: dict[str, np.ndarray[Any, Any]] = {}
    for name, value in obj.items():
        if isinstance(value, _TensorRef):
            out[str(name)] = value.materialise()
    return out
