"""The blob-store protocol: inputs, results and heartbeats, by key.

Keys are relative, slash-separated paths of safe characters (`inputs/<sha256>`,
`results/<id>.json`). `put(..., if_absent=True)` is the conditional write that makes results
idempotent: the first writer wins, atomically, across processes and machines.
"""

from __future__ import annotations

import re
from typing import IO, Protocol

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
    if key.split("/")[-1].startswith(".tmp-"):
        raise BadKey(f"invalid blob key {key!r}: names starting with .tmp- are reserved")
    return key


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
