"""The embedded blob store: a directory, one file per key."""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TypeVar

from .base import BlobNotFound, check_key

T = TypeVar("T")


class DirectoryBlobStore:
    """Calls for several keys run one after another in the calling thread: reads come from the
    page cache and writes are short system calls, so a thread pool's hand-offs cost more CPU than
    they save (measured: 4 fsynced writes took 2.5 times the CPU through a pool); a batch's
    fsyncs come after all its writes, before any of them is linked into place."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._base = str(self.root)
        self._folders: set[str] = set()  # made (or found) by this process: no mkdir per write
        self._names = itertools.count()

    def _file(self, key: str) -> str:
        # check_key admits no "..", no absolute path and no empty segment, so the joined path
        # stays under the root without a resolve() (a realpath syscall per path component).
        return f"{self._base}/{check_key(key)}"

    def put(self, key: str, data: bytes | IO[bytes], if_absent: bool = False, durable: bool = True) -> bool:
        return bool(self._put({key: data}, if_absent, durable))

    def put_many(self, items: Mapping[str, bytes], if_absent: bool = False, durable: bool = True) -> set[str]:
        return self._put(items, if_absent, durable)

    def _put(self, items: Mapping[str, bytes | IO[bytes]], if_absent: bool, durable: bool) -> set[str]:
        """Each item to a temporary file, then (`durable`) each fsynced, then each put in place
        (atomic: a reader sees the old blob or the whole new one, never a part), then (`durable`)
        each folder fsynced: a new name is on disk only once its directory is."""
        staged: list[tuple[str, str, str, int]] = []  # key, path, temporary path, open fd
        try:
            for key, data in items.items():
                path = self._file(key)
                tmp, fd = self._temporary(path.rpartition("/")[0])
                staged.append((key, path, tmp, fd))
                _write(fd, data)
            if durable:
                for *_, fd in staged:
                    os.fsync(fd)
            placed = {key for key, path, tmp, _ in staged if _place(tmp, path, if_absent)}
        finally:
            for _, _, tmp, fd in staged:
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        if durable:
            for folder in {path.rpartition("/")[0] for _, path, _, _ in staged}:
                _sync_folder(folder)
        return placed

    def _temporary(self, folder: str) -> tuple[str, int]:
        """A new file in `folder` (made if missing), named so that no other process or thread
        picks the same name (and O_EXCL would refuse it if one did)."""
        tmp = f"{folder}/.tmp-{os.getpid()}-{_TOKEN}-{next(self._names)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        return tmp, self._in(folder, lambda: os.open(tmp, flags, 0o644))

    def _in(self, folder: str, make: Callable[[], T]) -> T:
        """`make()` of something in `folder`, the folder made first if this process has not
        seen it (and again if it was removed since)."""
        if folder not in self._folders:
            os.makedirs(folder, exist_ok=True)
            self._folders.add(folder)
        try:
            return make()
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            return make()

    def link(self, pairs: Mapping[str, str]) -> set[str]:
        written = set()
        for new, old in pairs.items():
            path, existing = self._file(new), self._file(old)
            try:  # a second name for the same file: no data written, no inode made
                self._in(path.rpartition("/")[0], functools.partial(os.link, existing, path))
            except FileExistsError:
                with contextlib.suppress(FileNotFoundError):
                    os.utime(path)
                continue
            except FileNotFoundError:  # no blob under `existing` (never, or no longer): nothing to name
                continue
            written.add(new)
        return written

    def get(self, key: str) -> bytes:
        try:
            with open(self._file(key), "rb") as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFound(key) from None

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._file(key))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.unlink(self._file(key))

    def expire(self, folder: str, before: float) -> int:
        removed = 0
        for dirpath, dirs, files in os.walk(self.root / check_key(folder.rstrip("/"))):
            dirs[:] = _keyed(dirs)
            # and the temporaries a process killed mid-write left behind
            for name in _keyed(files) + [n for n in files if n.startswith(".tmp-")]:
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
        for dirpath, dirs, files in os.walk(start):
            dirs[:] = _keyed(dirs)
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in _keyed(files):
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def sync(self, keys: Sequence[str]) -> None:
        for key in keys:
            try:
                fd = os.open(self._file(key), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                # Its data, and its name with it: linking it changed the inode (its link count),
                # so a journaling file system (ext4, XFS) commits the new entry with it.
                os.fsync(fd)
            finally:
                os.close(fd)

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        out = {}
        for key in dict.fromkeys(keys):
            with contextlib.suppress(BlobNotFound):
                out[key] = self.get(key)
        return out


# Tells this process's temporary names from those of another host's process with the same pid
# (a shared directory); a forked child shares it, but not its parent's pid.
_TOKEN = secrets.token_hex(4)


def _keyed(names: list[str]) -> list[str]:
    """The names that are keys: not the store's own (temporaries, the record file: "." first)."""
    return [n for n in names if not n.startswith(".")]


def _write(fd: int, data: bytes | IO[bytes]) -> None:
    chunks = [data] if isinstance(data, bytes | bytearray | memoryview) else iter(lambda: data.read(1 << 20), b"")
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]


def _sync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _place(tmp: str, path: str, if_absent: bool) -> bool:
    """Put the written file `tmp` at `path`; with `if_absent` only if nothing is there (False)."""
    if not if_absent:
        os.replace(tmp, path)
        return True
    try:
        os.link(tmp, path)  # fails if the name exists: the check and the write are one atomic step
    except FileExistsError:
        # Someone stored it first (the same bytes, for inputs): wanted again, so its age (what
        # retention goes by) starts anew.
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)
        return False
    return True
