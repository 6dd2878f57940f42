"""Request ids: 16 bytes, 32 hex digits — issue time (4), random (6), HMAC (6).

The signature lets any web process tell an id it issued (queued, running or done) from one it
never did (404) without a request record written per image; the time lets it expire. The key
(`config/id-key`) is made by the first process that needs it; every other one reads it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable

from ..blobs.base import BlobStore

_ID_KEY = "config/id-key"


def issue_time(rid: str) -> float:
    """When a request id was issued: its first 4 bytes (8 hex digits), epoch seconds."""
    return float(int(rid[:8], 16))


class RequestIds:
    def __init__(self, blobs: BlobStore, clock: Callable[[], float] = time.time) -> None:
        self.blobs, self.clock = blobs, clock
        self._key: bytes | None = None

    def key(self) -> bytes:
        """The signing key (read or made now: call it at start, not on an event loop)."""
        if self._key is None:
            fresh = secrets.token_bytes(32)
            # Every web process must sign with the same key: the first one written wins.
            if not self.blobs.put(_ID_KEY, fresh, if_absent=True):
                fresh = self.blobs.get(_ID_KEY)
            self._key = fresh
        return self._key

    def _mac(self, body: bytes, owner: str) -> bytes:
        # An owner (the API key's name) is signed into the id: only that key, or an admin who
        # tries every name, can tell the id was issued. No owner: the MAC of ids before keys.
        return hmac.new(self.key(), body + (b"\0" + owner.encode() if owner else b""), hashlib.sha256).digest()[:6]

    def new_ids(self, n: int, owner: str = "") -> list[str]:
        stamp = int(self.clock()).to_bytes(4, "big")
        out = []
        for _ in range(n):
            body = stamp + secrets.token_bytes(6)
            out.append((body + self._mac(body, owner)).hex())
        return out

    def issued_at(self, rid: str, owners: Iterable[str] = ("",)) -> float | None:
        """When this deployment issued `rid` for one of `owners`, or None if it never did."""
        try:
            raw = bytes.fromhex(rid)
        except ValueError:
            return None
        if len(raw) != 16:
            return None
        if any(hmac.compare_digest(self._mac(raw[:10], owner), raw[10:]) for owner in owners):
            return issue_time(rid)
        return None
