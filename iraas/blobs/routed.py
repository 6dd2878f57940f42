"""One blob store made of several, by folder: the keys under each routed folder in the store
given for it, every other key in the default. The embedded store keeps its small per-image
records (results, dedup entries, heartbeats) in SQLite and its images as files this way."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import IO

from .base import BlobStore, check_key


class RoutedBlobStore:
    def __init__(self, default: BlobStore, folders: Mapping[str, BlobStore]) -> None:
        """`folders`: "results/" (each ending in "/") to the store that holds the keys under it."""
        if not all(f.endswith("/") for f in folders):
            raise ValueError(f"routed folders end in '/': {sorted(folders)}")
        self.default, self.folders = default, dict(folders)

    def store(self, key: str) -> BlobStore:
        """The store of `key`'s folder (which checks the key, as every store does)."""
        return next((s for f, s in self.folders.items() if key.startswith(f)), self.default)

    def _stores(self) -> list[BlobStore]:
        return list({id(s): s for s in [self.default, *self.folders.values()]}.values())

    def _holding(self, prefix: str) -> list[BlobStore]:
        """The stores that may hold keys starting with `prefix`: one, within a routed folder."""
        inside = self.store(prefix)
        return [inside] if inside is not self.default else self._stores()

    def _by_store(self, keys: Sequence[str]) -> list[tuple[BlobStore, list[str]]]:
        groups: dict[int, tuple[BlobStore, list[str]]] = {}
        for key in keys:
            store = self.store(check_key(key))
            groups.setdefault(id(store), (store, []))[1].append(key)
        return list(groups.values())

    def put(self, key: str, data: bytes | IO[bytes], if_absent: bool = False, durable: bool = True) -> bool:
        return self.store(key).put(key, data, if_absent=if_absent, durable=durable)

    def put_many(self, items: Mapping[str, bytes], if_absent: bool = False, durable: bool = True) -> set[str]:
        written: set[str] = set()
        for store, keys in self._by_store(list(items)):
            written |= store.put_many({k: items[k] for k in keys}, if_absent=if_absent, durable=durable)
        return written

    def get(self, key: str) -> bytes:
        return self.store(key).get(key)

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for store, mine in self._by_store(keys):
            found |= store.get_many(mine)
        return found

    def exists(self, key: str) -> bool:
        return self.store(key).exists(key)

    def delete(self, key: str) -> None:
        self.store(key).delete(key)

    def link(self, pairs: Mapping[str, str]) -> set[str]:
        written: set[str] = set()
        apart: dict[str, str] = {}
        for store, news in self._by_store(list(pairs)):
            same = {n: pairs[n] for n in news if self.store(check_key(pairs[n])) is store}
            written |= store.link(same) if same else set()
            apart |= {n: pairs[n] for n in news if n not in same}
        if apart:  # a name in another store than its blob: a copy
            found = self.get_many(list(apart.values()))
            copies = {new: found[old] for new, old in apart.items() if old in found}
            written |= self.put_many(copies, if_absent=True, durable=False) if copies else set()
        return written

    def sync(self, keys: Sequence[str]) -> None:
        for store, mine in self._by_store(keys):
            store.sync(mine)

    def list(self, prefix: str = "") -> list[str]:
        return sorted(key for store in self._holding(prefix) for key in store.list(prefix))

    def expire(self, folder: str, before: float) -> int:
        return sum(store.expire(folder, before) for store in self._holding(folder))
