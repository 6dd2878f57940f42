"""The blob-store protocol: inputs, results and heartbeats, by key.

Keys are relative, slash-separated paths of safe characters (`inputs/<sha256>`,
`results/<id>.json`). `put(..., if_absent=True)` is the conditional write that makes results
idempotent: the first writer wins, atomically, across processes and machines.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Protocol, TypeVar

_KEY = re.compile(r"^[A-Za-z0-9_.=-]+(/[A-Za-z0-9_.=-]+)*$")


class BlobError(Exception):
    """A blob-store operation failed."""


class BlobDenied(BlobError, PermissionError):
    """The store refused the call: this process may not (a configuration error)."""


class BlobNotFound(BlobError, KeyError):
    """No blob under that key."""


class BadKey(BlobError, ValueError):
    """A key that could escape the store or that S3 and a file system would disagree on."""


def check_key(key: str) -> str:
    if len(key) > 512 or not _KEY.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise BadKey(f"invalid blob key {key!r}: use relative a/b/c paths of letters, digits, '_.=-'")
    if any(part.startswith(".") for part in key.split("/")):
        raise BadKey(f"invalid blob key {key!r}: names starting with '.' are the store's own")
    return key


def key_range_end(prefix: str) -> str:
    """The smallest string greater than every string starting with `prefix` (a range scan on
    the primary key, not a LIKE that the collation may not index)."""
    return prefix + "\U0010ffff" if prefix else "\U0010ffff"


class BlobStore(Protocol):
    def put(self, key: str, data: bytes | IO[bytes], if_absent: bool = False, durable: bool = True) -> bool:
        """Store `data` (bytes, or a file read from its current position, for uploads spooled
        to disk) under `key` atomically (readers see all or nothing). With `if_absent`,
        store only if no blob exists there and return False (changing nothing) if one does.
        `durable=False`: the blob may be lost in a power cut (never in a process crash); for
        state that is rewritten every second anyway."""
        ...

    def get(self, key: str) -> bytes:
        """The blob's bytes; raises BlobNotFound."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the blob; no error if there is none."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with `prefix` (a plain string prefix, as S3), sorted. Reads only
        what lies under the prefix's folder, not the whole store."""
        ...

    def expire(self, folder: str, before: float) -> int:
        """Delete the blobs under `folder` ("inputs/") last written before `before` (epoch
        seconds); how many. On S3 the bucket's lifecycle rules do this: nothing to do here."""
        ...

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The blobs under `keys` that exist (a missing key is absent from the answer): one
        call where the store has one (PostgreSQL), the gets in parallel where each waits on the
        network (S3), one after another from a local directory."""
        ...

    def put_many(self, items: Mapping[str, bytes], if_absent: bool = False, durable: bool = True) -> set[str]:
        """`put` of each item (one transaction where the store has them, in parallel on S3,
        written then fsynced together in a directory); the keys written: with `if_absent`,
        those where no blob existed."""
        ...

    def link(self, pairs: Mapping[str, str]) -> set[str]:
        """For each `new: existing` pair, the blob under `existing` under `new` as well, unless
        a blob is there (it stays, its age anew, as with `put(if_absent=True)`); the new keys
        written. No copy where the store can (a hard link in a directory, one statement on
        PostgreSQL); as durable as `durable=False`. An `existing` with no blob writes nothing."""
        ...

    def sync(self, keys: Sequence[str]) -> None:
        """Make the blobs under `keys`, put with `durable=False`, durable now: no power cut
        loses them after this returns. A key with no blob is no error."""
        ...


A = TypeVar("A")
B = TypeVar("B")
_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def in_parallel(fn: Callable[[A], B], args: Sequence[A]) -> list[B]:
    """`fn` over `args` on a pool of this process, for calls that wait on the network (S3's
    HTTP, with the GIL free); a single one inline, since a pool trip costs more than it saves."""
    if len(args) <= 1:
        return [fn(a) for a in args]
    with _pools_lock:  # a pool made before a fork() has no threads in the child: one per pid
        pool = _pools.get(os.getpid())
        if pool is None:
            pool = _pools[os.getpid()] = ThreadPoolExecutor(8, thread_name_prefix="blobs")
    return list(pool.map(fn, args))


def get_each(store: BlobStore, keys: Sequence[str]) -> dict[str, bytes]:
    """`get_many` for a store without a call for several keys."""

    def get(key: str) -> tuple[str, bytes | None]:
        try:
            return key, store.get(key)
        except BlobNotFound:
            return key, None

    return {k: v for k, v in in_parallel(get, list(dict.fromkeys(keys))) if v is not None}


def put_each(store: BlobStore, items: Mapping[str, bytes], if_absent: bool, durable: bool) -> set[str]:
    """`put_many` for a store without a call for several items."""

    def put(item: tuple[str, bytes]) -> tuple[str, bool]:
        return item[0], store.put(item[0], item[1], if_absent=if_absent, durable=durable)

    return {k for k, written in in_parallel(put, list(items.items())) if written}


def link_each(store: BlobStore, pairs: Mapping[str, str]) -> set[str]:
    """`link` for a store that can only copy: each existing blob read and put if absent."""
    found = store.get_many(list(dict.fromkeys(pairs.values())))
    copies = {new: found[old] for new, old in pairs.items() if old in found}
    return store.put_many(copies, if_absent=True, durable=False) if copies else set()
