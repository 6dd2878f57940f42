"""The embedded blob store: a directory, one file per key."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from .base import BlobNotFound, check_key, get_each, put_each


class DirectoryBlobStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        # check_key admits no "..", no absolute path and no empty segment, so the joined path
        # stays under the root without a resolve() (a realpath syscall per path component).
        return self.root / check_key(key)

    def put(self, key: str, data: bytes | IO[bytes], if_absent: bool = False, durable: bool = True) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                if isinstance(data, bytes | bytearray | memoryview):
                    f.write(data)
                else:
                    shutil.copyfileobj(data, f, 1 << 20)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            if if_absent:
                # link() fails if the name exists: the check and the write are one atomic step.
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    # Someone stored the same bytes: they are wanted again, so their age
                    # (what retention goes by) starts anew.
                    with contextlib.suppress(FileNotFoundError):
                        os.utime(path)
                    return False
            else:
                os.replace(tmp, path)
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFound(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            self._path(key).unlink()

    def expire(self, folder: str, before: float) -> int:
        removed = 0
        for dirpath, _dirs, files in os.walk(self.root / check_key(folder.rstrip("/"))):
            for name in files:
                path = os.path.join(dirpath, name)
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(path).st_mtime < before:
                        os.unlink(path)
                        removed += 1
        return removed

    def list(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        # Walk only the folder the prefix names ("heartbeats/" of 20,000 results reads one).
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / check_key(folder) if folder else self.root
        for dirpath, _dirs, files in os.walk(start):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                key = name if rel == "." else f"{rel}/{name}"
                if not name.startswith(".tmp-") and key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        return get_each(self, keys)

    def put_many(self, items: Mapping[str, bytes], if_absent: bool = False, durable: bool = True) -> set[str]:
        return put_each(self, items, if_absent, durable)
