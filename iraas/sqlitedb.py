"""One SQLite file shared by the processes of a machine: the embedded queue, the small records.

WAL mode, every write one short transaction that takes the write lock up front (BEGIN
IMMEDIATE), so a process killed at any point leaves each change made or not, never half.
synchronous=NORMAL survives any process crash; only a power loss may drop the last commits,
until a commit with `durable=True` (which waits for the disk, and for every commit before it).
Busy and locked errors are retried, never surfaced, for up to `lock_timeout_s`.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_TIMEOUT_S = 120.0
_READER_CACHE_KIB = 256


class SqliteFile:
    def __init__(
        self, path: str | Path, schema: str, error: type[Exception], lock_timeout_s: float = LOCK_TIMEOUT_S
    ) -> None:
        """`schema`: run on every connection (CREATE … IF NOT EXISTS); `error`: what a failure
        is raised as (the caller's protocol has its own)."""
        self.path, self.schema, self.error, self.lock_timeout_s = Path(path), schema, error, lock_timeout_s
        self._lock = threading.Lock()  # writes: one connection per process, one transaction at a time
        self._conn_pid = -1
        self._db: sqlite3.Connection | None = None
        # Reads: a connection per thread, so that readers wait on no lock (in WAL mode they wait
        # on nobody): the web tier's lookups from 32 threads queued ~20 ms behind one connection.
        # Held by the thread alone: a thread pool retires idle threads, and their connections
        # must close with them (a list of them all would keep every one open).
        self._readers = threading.local()
        with self._lock:
            self._connect()

    def _connect(self) -> sqlite3.Connection:
        # A connection must not cross fork(): reopen in a child process.
        if self._db is None or self._conn_pid != os.getpid():
            db = self._open()
            self._retry(lambda: db.executescript(self.schema))
            self._db, self._conn_pid = db, os.getpid()
        return self._db

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=self.lock_timeout_s, isolation_level=None, check_same_thread=False)
        self._retry(lambda: db.execute("PRAGMA journal_mode=WAL"))
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _reader(self) -> sqlite3.Connection:
        mine: _ThreadConnection | None = getattr(self._readers, "reader", None)
        if mine is None or mine.pid != os.getpid():
            with self._lock:
                self._connect()  # the schema made before the first read
                db = self._open()
            # A small page cache: a web process has tens of threads, each its reader, and the
            # operating system caches the file for all of them.
            db.execute(f"PRAGMA cache_size=-{_READER_CACHE_KIB}")
            mine = self._readers.reader = _ThreadConnection(db)
        return mine.db

    def _failed(self, exc: sqlite3.Error) -> Exception:
        return self.error(f"SQLite error in {self.path.name}: {exc}")

    def _retry(self, fn: Callable[[], object]) -> None:
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                fn()
                return
            except sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                    raise self._failed(exc) from exc
                time.sleep(random.uniform(0.001, 0.01))

    @contextmanager
    def tx(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction; `durable`: its commit waits until it (and every commit before
        it, of any process) is on disk."""
        with self._lock:
            db = self._connect()
            if durable:  # FULL syncs the WAL at each commit (NORMAL only at checkpoints)
                db.execute("PRAGMA synchronous=FULL")  # (not allowed inside a transaction)
            try:
                self._retry(lambda: db.execute("BEGIN IMMEDIATE"))
                try:
                    yield db
                except sqlite3.Error as exc:
                    _rollback(db)
                    raise self._failed(exc) from exc
                except BaseException:
                    _rollback(db)
                    raise
                self._retry(lambda: db.execute("COMMIT"))
            finally:
                if durable:
                    db.execute("PRAGMA synchronous=NORMAL")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The connection, for reads outside a transaction (each sees the last commit)."""
        try:
            yield self._reader()
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc

    def close(self) -> None:
        """Closes this process's connections (a child's copies of its parent's are left): the
        writing one, and every thread's reading one with the thread-locals that hold them."""
        with self._lock:
            if self._db is not None and self._conn_pid == os.getpid():
                self._db.close()
            self._db, self._readers = None, threading.local()


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:  # (an I/O error or a full disk may have rolled it back already)
        db.execute("ROLLBACK")


class _ThreadConnection:
    """A thread's reading connection, closed when the thread ends (its thread-local goes): a
    connection is kept alive by a reference cycle of its own (its statement cache), so only
    the garbage collector would close it otherwise, at some later time."""

    __slots__ = ("db", "pid")

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db, self.pid = db, os.getpid()

    def __del__(self) -> None:
        if self.pid == os.getpid():  # (a forked child's copy is its parent's to close)
            self.db.close()
