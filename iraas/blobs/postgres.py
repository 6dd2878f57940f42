"""Blobs in PostgreSQL, for deployments on several hosts that have no object store: one row per
key in `iraas_blobs` (pg.py makes the schema). A put is one statement; `if_absent` is an
INSERT that does nothing on a conflict, so the first writer wins across every host. A durable
put's commit is flushed before it returns; `durable=False` (heartbeats, the status, an input)
may be undone by a crash of the database server within ~0.6 s of it, as the directory store's
may by a power cut.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import IO, Any

from ..pg import NOW, Database, DatabaseError
from .base import BlobError, BlobNotFound, check_key, key_range_end


class PostgresBlobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @contextmanager
    def _conn(self, durable: bool = True) -> Iterator[Any]:
        try:
            with self.db.connection(durable) as conn:
                yield conn
        except DatabaseError as exc:
            raise BlobError(str(exc)) from None

    def put(self, key: str, data: bytes | IO[bytes], if_absent: bool = False, durable: bool = True) -> bool:
        body = bytes(data) if isinstance(data, bytes | bytearray | memoryview) else data.read()
        return key in self.put_many({check_key(key): body}, if_absent=if_absent, durable=durable)

    def get(self, key: str) -> bytes:
        check_key(key)
        with self._conn(durable=False) as conn:
            # In binary: as text, the server would write the bytes out in hex and we read it back.
            row = conn.execute("SELECT data FROM iraas_blobs WHERE key = %s", (key,), binary=True).fetchone()
        if row is None:
            raise BlobNotFound(key)
        return bytes(row[0])

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        for key in keys:
            check_key(key)
        if not keys:  # no round trip for nothing (the results of a batch: no other writer)
            return {}
        with self._conn(durable=False) as conn:
            rows = conn.execute(
                "SELECT key, data FROM iraas_blobs WHERE key = ANY(%s)", (list(keys),), binary=True
            ).fetchall()
        return {key: bytes(data) for key, data in rows}

    def put_many(self, items: Mapping[str, bytes], if_absent: bool = False, durable: bool = True) -> set[str]:
        # One statement (one commit, one WAL flush) for a worker's whole batch of results.
        keys, bodies = [check_key(k) for k in items], [bytes(v) for v in items.values()]
        if not keys:
            return set()
        # In binary (%b): as text, each image in the array would go out hex-escaped for the
        # server to parse back, ten times the time of the insert itself (5.4 against 0.5 ms).
        rows = f"SELECT k, d, {NOW} FROM unnest(%b::text[], %b::bytea[]) AS t(k, d)"
        with self._conn(durable) as conn:
            if not if_absent:
                conn.execute(
                    f"INSERT INTO iraas_blobs (key, data, modified) {rows}"
                    " ON CONFLICT (key) DO UPDATE SET data = EXCLUDED.data, modified = EXCLUDED.modified",
                    (keys, bodies),
                )
                return set(keys)
            cur = conn.execute(
                f"INSERT INTO iraas_blobs (key, data, modified) {rows} ON CONFLICT (key) DO NOTHING RETURNING key",
                (keys, bodies),
            )
            return _renewed(conn, keys, cur)

    def link(self, pairs: Mapping[str, str]) -> set[str]:
        news, olds = [check_key(k) for k in pairs], [check_key(v) for v in pairs.values()]
        if not news:
            return set()
        with self._conn(durable=False) as conn:  # the data copied inside the server, not sent
            cur = conn.execute(
                f"INSERT INTO iraas_blobs (key, data, modified) SELECT t.n, b.data, {NOW}"
                " FROM unnest(%s::text[], %s::text[]) AS t(n, o) JOIN iraas_blobs b ON b.key = t.o"
                " ON CONFLICT (key) DO NOTHING RETURNING key",
                (news, olds),
            )
            return _renewed(conn, news, cur)

    def sync(self, keys: Sequence[str]) -> None:
        for key in keys:
            check_key(key)
        if not keys:
            return
        # A durable commit waits until the WAL is on disk up to its own record, so every
        # asynchronous commit before it (the puts with durable=False) is on disk too. It needs a
        # transaction id to write a commit record at all: txid_current() assigns one.
        with self._conn(durable=True) as conn:
            conn.execute("SELECT txid_current()")

    def exists(self, key: str) -> bool:
        check_key(key)
        with self._conn(durable=False) as conn:
            return conn.execute("SELECT 1 FROM iraas_blobs WHERE key = %s", (key,)).fetchone() is not None

    def delete(self, key: str) -> None:
        check_key(key)
        with self._conn() as conn:
            conn.execute("DELETE FROM iraas_blobs WHERE key = %s", (key,))

    def list(self, prefix: str = "") -> list[str]:
        with self._conn(durable=False) as conn:
            rows = conn.execute(
                "SELECT key FROM iraas_blobs WHERE key >= %s AND key < %s ORDER BY key", (prefix, key_range_end(prefix))
            ).fetchall()
        return [r[0] for r in rows]

    def expire(self, folder: str, before: float) -> int:
        with self._conn() as conn:
            cur = conn.execute(
                "DELETE FROM iraas_blobs WHERE key >= %s AND key < %s AND modified < %s",
                (folder, key_range_end(folder), before),
            )
            return int(cur.rowcount)


def _renewed(conn: Any, keys: list[str], inserted: Any) -> set[str]:
    """The keys an `INSERT … ON CONFLICT DO NOTHING RETURNING key` wrote; the others, which
    existed, are wanted again: their age (what retention goes by) starts anew, as a put's."""
    written = {r[0] for r in inserted.fetchall()}
    if len(written) < len(keys):
        stale = [k for k in keys if k not in written]
        conn.execute(f"UPDATE iraas_blobs SET modified = {NOW} WHERE key = ANY(%s)", (stale,))
    return written
