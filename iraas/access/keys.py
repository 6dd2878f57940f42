"""API keys, kept in the blob store so that every web process of a deployment shares them.

    keys/by-hash/<sha256 of the key>.json   the key's record: name, scope, limits, revoked_at
    keys/names/<name>.json                  {"hash": ...}: names are unique, and listable

A key is `iraas_` + 43 random URL-safe characters (256 bits), shown once at creation and
stored only as its SHA-256: with that much entropy a fast hash is as safe as a slow one (as
GitHub's and Stripe's tokens), and a lookup is one read by hash, no comparison loop. The
prefix lets secret scanners recognise a leaked key.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from ..blobs.base import BlobNotFound, BlobStore

SCOPES = ("recognize", "admin")
PREFIX = "iraas_"
NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # a key's name (the OpenAPI document says it too)
_NAME = re.compile(NAME_PATTERN)
_BY_HASH = "keys/by-hash/"
_NAMES = "keys/names/"


class KeyRingError(ValueError):
    """A key cannot be created or revoked as asked; `status` is the HTTP answer for it."""

    def __init__(self, message: str, status: int = 400, code: str = "bad_key_request") -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class Key:
    name: str
    scope: str
    created_at: float
    revoked_at: float | None = None
    # per-key overrides of the deployment's defaults; None: the default
    requests_per_s: float | None = None
    images_per_s: float | None = None
    images_per_day: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Key:
        return cls(**json.loads(raw))


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise KeyRingError(f"a key name is 1-64 letters, digits, '_.-' (starting with a letter or digit), not {name!r}")
    return name


class KeyRing:
    """Create, list, revoke and find keys. `find` caches each answer for `cache_s` seconds, so
    a revocation reaches every web process within that (one read per key per second)."""

    def __init__(
        self,
        blobs: BlobStore,
        *,
        cache_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock`: when keys are made and revoked; `monotonic`: the cache's age."""
        self.blobs, self.cache_s, self.clock, self.monotonic = blobs, cache_s, clock, monotonic
        self._found: dict[str, tuple[float, Key | None]] = {}
        self._names: tuple[float, list[str]] | None = None
        self._lock = threading.Lock()

    def create(self, name: str, scope: str, *, token: str | None = None, **limits: float | int | None) -> str:
        """A new key named `name` (or `token`, a key made elsewhere, e.g. given to a deploy);
        returns the key itself, stored nowhere in clear. A revoked key's name may be reused."""
        check_name(name)
        if scope not in SCOPES:
            raise KeyRingError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        for what, value in limits.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not value > 0):
                raise KeyRingError(f"{what} must be a number above 0, not {value!r}")
        if token is not None and not (token.startswith(PREFIX) and 43 <= len(token) - len(PREFIX) <= 94):
            raise KeyRingError(
                f"a key given is {PREFIX} and 43 to 94 URL-safe characters (iraas keys create makes one)"
            )
        exists = f"a key named {name!r} exists: revoke it first, or choose another name"
        old = self._by_name(name)
        if old is not None and old[1].active:
            raise KeyRingError(exists, 409, "key_exists")
        token = token or PREFIX + secrets.token_urlsafe(32)
        key = Key(name=name, scope=scope, created_at=self.clock(), **limits)  # type: ignore[arg-type]
        self.blobs.put(_BY_HASH + digest(token) + ".json", key.to_json())
        entry = json.dumps({"hash": digest(token)}).encode()
        if old is None and not self.blobs.put(_NAMES + name + ".json", entry, if_absent=True):
            # created meanwhile by someone else: theirs stands; this key's record, never
            # handed out, names nobody and can be used by nobody
            raise KeyRingError(exists, 409, "key_exists")
        if old is not None:
            self.blobs.put(_NAMES + name + ".json", entry)
        return token

    def ensure(self, name: str, scope: str, token: str) -> bool:
        """`token` (a key made elsewhere: a Kubernetes Secret) stored as `name`, unless that very
        key is in place already; True if stored now. Safe to run at every start, by several
        processes at once; a revoked key, or one under another name, is refused."""
        key = self._read(token)
        if key is None:
            try:
                self.create(name, scope, token=token)
                return True
            except KeyRingError as exc:
                key = self._read(token)  # another process may have stored this very key meanwhile
                if exc.code != "key_exists" or key is None:
                    raise
        if key.name != name or key.scope != scope or not key.active:
            state = "revoked" if not key.active else f"named {key.name!r}, scope {key.scope}"
            raise KeyRingError(f"this key exists already ({state}): give a new one", 409, "key_exists")
        return False

    def _read(self, token: str) -> Key | None:
        """`find` without its cache: what the store holds now."""
        self._found.pop(digest(token), None)
        return self.find(token)

    def _by_name(self, name: str) -> tuple[str, Key] | None:
        try:
            h = json.loads(self.blobs.get(_NAMES + name + ".json"))["hash"]
            return h, Key.from_json(self.blobs.get(_BY_HASH + h + ".json"))
        except BlobNotFound:
            return None

    def all(self) -> list[Key]:
        """Every key, revoked ones included (their names stay readable as result owners)."""
        out = []
        for blob in self.blobs.list(_NAMES):
            found = self._by_name(blob[len(_NAMES) : -len(".json")])
            if found is not None:
                out.append(found[1])
        return out

    def revoke(self, name: str) -> Key:
        found = self._by_name(check_name(name))
        if found is None:
            raise KeyRingError(f"no key named {name!r}", 404, "not_found")
        h, key = found
        if key.active:
            key = replace(key, revoked_at=self.clock())
            self.blobs.put(_BY_HASH + h + ".json", key.to_json())
        return key

    def cached(self, token: str) -> tuple[bool, Key | None]:
        """(known, key) from the cache alone, no store read (for the event loop): known is
        False when the store must be asked (`find`). Not a key at all is known: None."""
        if not token.startswith(PREFIX) or len(token) > 100:
            return True, None
        hit = self._found.get(digest(token))
        if hit is None or self.monotonic() - hit[0] >= self.cache_s:
            return False, None
        return True, hit[1]

    def find(self, token: str) -> Key | None:
        """The key `token` is, if it exists (revoked or not); cached for `cache_s`."""
        known, key = self.cached(token)
        if known:
            return key
        h = digest(token)
        try:
            key = Key.from_json(self.blobs.get(_BY_HASH + h + ".json"))
        except BlobNotFound:
            key = None
        with self._lock:
            if len(self._found) > 10_000:  # a flood of wrong keys cannot grow this without bound
                self._found.clear()
            self._found[h] = (self.monotonic(), key)
        return key

    def cached_names(self) -> list[str] | None:
        """`names()` if read within the last 2 s, else None: no store read (for the event loop)."""
        if self._names is None or self.monotonic() - self._names[0] > 2 * self.cache_s:
            return None
        return self._names[1]

    def names(self) -> list[str]:
        """Names of every key ever created (owners of results), re-read at most every 2 s."""
        names = self.cached_names()
        if names is None:
            names = [blob[len(_NAMES) : -len(".json")] for blob in self.blobs.list(_NAMES)]
            self._names = (self.monotonic(), names)
        return names
