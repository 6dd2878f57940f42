"""Blobs in a SQLite file, for the small records of the embedded store (results, dedup entries,
heartbeats): a row each, so no file (and no inode, the costly part on some file systems: 0.1 to
0.4 ms on this project's test machine) is made per image. Every process of the machine shares
the file (sqlitedb.py: WAL, one short transaction a call); `if_absent` is an INSERT that does
nothing on a conflict, so the first writer wins across processes. A put that is not `durable`
survives any process crash and may be undone by a power cut, until a `sync` or a durable put.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from sqlite3 import Connection
from typing import IO

from ..sqlitedb import SqliteFile
from .base import BlobError, BlobNotFound, check_key, key_range_end

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (key TEXT PRIMARY KEY, data BLOB NOT NULL, modified REAL NOT NULL);
CREATE TABLE IF NOT EXISTS synced (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL);
"""
_CHUNK = 500  # keys per statement: under SQLite's limit of bound parameters


class SqliteBlobStore:
    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.db, self.clock = SqliteFile(path, _SCHEMA, BlobError), clock

    def put(self, key: str, data: bytes | IO[bytes], if_absent: bool = False, durable: bool = True) -> bool:
        body = bytes(data) if isinstance(data, bytes | bytearray | memoryview) else data.read()
        return key in self.put_many({key: body}, if_absent=if_absent, durable=durable)

    def put_many(self, items: Mapping[str, bytes], if_absent: bool = False, durable: bool = True) -> set[str]:
        rows = [(check_key(k), bytes(v), self.clock()) for k, v in items.items()]
        if not rows:
            return set()
        with self.db.tx(durable) as db:
            if not if_absent:
                db.executemany(
                    "INSERT INTO blobs (key, data, modified) VALUES (?, ?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET data = excluded.data, modified = excluded.modified",
                    rows,
                )
                return {r[0] for r in rows}
            return self._insert_new(db, rows, "INSERT OR IGNORE INTO blobs (key, data, modified) VALUES (?, ?, ?)")

    def link(self, pairs: Mapping[str, str]) -> set[str]:
        rows = [(check_key(new), self.clock(), check_key(old)) for new, old in pairs.items()]
        if not rows:
            return set()
        with self.db.tx() as db:  # the data copied inside SQLite, not read out and back
            sql = "INSERT OR IGNORE INTO blobs (key, data, modified) SELECT ?, data, ? FROM blobs WHERE key = ?"
            return self._insert_new(db, rows, sql)

    def _insert_new(self, db: Connection, rows: Sequence[tuple[str, object, object]], sql: str) -> set[str]:
        """The keys `sql` (an INSERT OR IGNORE of a row) wrote; those that existed are wanted
        again: their age (what retention goes by) starts anew, as a put's."""
        written = set()
        for row in rows:
            if db.execute(sql, row).rowcount == 1:
                written.add(row[0])
            else:
                db.execute("UPDATE blobs SET modified = ? WHERE key = ?", (self.clock(), row[0]))
        return written

    def sync(self, keys: Sequence[str]) -> None:
        for key in keys:
            check_key(key)
        if keys:  # a durable commit syncs the log up to it: every commit before it with it
            with self.db.tx(durable=True) as db:
                db.execute("INSERT OR REPLACE INTO synced (id, at) VALUES (1, ?)", (self.clock(),))

    def get(self, key: str) -> bytes:
        found = self.get_many([key])
        if key not in found:
            raise BlobNotFound(key)
        return found[key]

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        wanted = list(dict.fromkeys(check_key(k) for k in keys))
        out: dict[str, bytes] = {}
        with self.db.read() as db:
            for chunk in _chunks(wanted):
                marks = ",".join("?" * len(chunk))
                out.update(db.execute(f"SELECT key, data FROM blobs WHERE key IN ({marks})", chunk).fetchall())
        return out

    def exists(self, key: str) -> bool:
        with self.db.read() as db:
            return db.execute("SELECT 1 FROM blobs WHERE key = ?", (check_key(key),)).fetchone() is not None

    def delete(self, key: str) -> None:
        with self.db.tx(durable=True) as db:
            db.execute("DELETE FROM blobs WHERE key = ?", (check_key(key),))

    def list(self, prefix: str = "") -> list[str]:
        with self.db.read() as db:
            rows = db.execute(
                "SELECT key FROM blobs WHERE key >= ? AND key < ? ORDER BY key", (prefix, key_range_end(prefix))
            ).fetchall()
        return [r[0] for r in rows]

    def expire(self, folder: str, before: float) -> int:
        with self.db.tx() as db:
            cur = db.execute(
                "DELETE FROM blobs WHERE key >= ? AND key < ? AND modified < ?", (folder, key_range_end(folder), before)
            )
            return int(cur.rowcount)

    def close(self) -> None:
        self.db.close()


def _chunks(keys: list[str]) -> Iterator[list[str]]:
    for i in range(0, len(keys), _CHUNK):
        yield keys[i : i + _CHUNK]
