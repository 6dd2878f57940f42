"""One PostgreSQL database as iraas's store: a connection pool per process, the schema created
on first start and migrated by version, and waits woken by LISTEN/NOTIFY.

Every process of a deployment (on any host) uses the same database; the queue, blob store and
reply channels on it (`queues/postgres.py`, `blobs/postgres.py`, `replies.py`) share one
`Database` per process. Time is the database server's (`now()`), never a host's: hosts' clocks
differ, and visibility timeouts must mean the same everywhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

# Each migration is run once, in order, in one transaction with the version it brings; a
# later release appends, never edits. The advisory lock makes concurrent first starts safe.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE iraas_messages (
        id uuid PRIMARY KEY,
        queue text NOT NULL,
        body text NOT NULL,
        receipt uuid,
        receive_count integer NOT NULL DEFAULT 0,
        sent_at double precision NOT NULL,
        visible_at double precision NOT NULL
    );
    CREATE INDEX iraas_messages_ready ON iraas_messages (queue, visible_at);
    CREATE INDEX iraas_messages_receipt ON iraas_messages (receipt);
    CREATE TABLE iraas_blobs (
        key text COLLATE "C" PRIMARY KEY,  -- byte order: prefix ranges, sorted lists
        data bytea NOT NULL,
        modified double precision NOT NULL
    );
    -- Images are compressed already: storing them uncompressed (out of line) spares the
    -- server a futile compression on every write and a decompression on every read.
    ALTER TABLE iraas_blobs ALTER COLUMN data SET STORAGE EXTERNAL;
    CREATE TABLE iraas_inboxes (
        name text PRIMARY KEY,
        seen_at double precision NOT NULL
    );
    """,
]
_MIGRATE_LOCK = 0x1AA5_0001  # an advisory lock id of our own
# Every session iraas opens. A session whose client is cut off, or stopped, inside a transaction
# would keep its row locks (every receiver skips a locked message: it would never be answered)
# until the server's TCP gave up, two hours by the kernel's default; an idle one would keep its
# connection slot as long. iraas's transactions never wait on anything but the database, so ten
# seconds idle inside one means its client is gone; keepalives on both sides notice a silent
# peer within ~11 s (the duties' lock session, duty.py, within ~5), and data left unacknowledged
# for 10 s ends a connection on either side, where TCP alone would retry for ~15 minutes.
_SESSION = (
    "-c idle_in_transaction_session_timeout=10s -c tcp_keepalives_idle=5"
    " -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3 -c tcp_user_timeout=10000"
)
_CLIENT = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10000,
}
NOW = "extract(epoch from now())"  # the database server's clock, in epoch seconds


class DatabaseError(Exception):
    """The database could not be reached or refused (the message never holds a password)."""


def redacted(url: str) -> str:
    """`url` as it may be logged or shown: any password replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://(unreadable URL)"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc[-1]}"))


def channel(name: str) -> str:
    """A NOTIFY channel name for `name` (identifiers are at most 63 bytes; names may be longer)."""
    import hashlib

    return "iraas_" + hashlib.sha1(name.encode()).hexdigest()[:24]


class Database:
    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 8, timeout_s: float = 5.0) -> None:
        """`url`: a libpq URL (postgresql://user@host:port/db); a password may also come from
        PGPASSFILE / ~/.pgpass, PG* variables or a service file, as libpq reads them."""
        self.url, self.shown = url, redacted(url)
        self.min_size, self.max_size, self.timeout_s = min_size, max_size, timeout_s
        self._pools: dict[bool, Any] = {}  # durable or not → its pool
        self._pid = -1
        self._lock = threading.Lock()

    def pool(self, durable: bool = True) -> Any:
        # A pool (its connections and threads) must not cross fork(): new ones in a child.
        with self._lock:
            if self._pid != os.getpid():
                self._pools, self._pid = {}, os.getpid()
            if durable not in self._pools:
                self._pools[durable] = self._open(durable)
            return self._pools[durable]

    def _open(self, durable: bool) -> Any:
        from psycopg_pool import ConnectionPool

        pool = ConnectionPool(
            self.url,
            kwargs={"autocommit": True, **self._session(durable)},
            min_size=self.min_size,
            max_size=self.max_size,
            timeout=self.timeout_s,
            # Connections are not checked before use (a round trip each: 3 points of throughput
            # measured): after a database restart each old one fails once (a 503 with Retry-After
            # at intake, a retry in a worker) and the pool replaces it.
            open=False,
        )
        try:
            pool.open(wait=True, timeout=self.timeout_s)
        except Exception as exc:
            pool.close()
            raise DatabaseError(f"cannot connect to {self.shown}: {_why(exc)}") from None
        return pool

    @contextmanager
    def connection(self, durable: bool = True) -> Iterator[Any]:
        """A connection in autocommit mode; `with conn.transaction():` for several statements.
        `durable=False`: its commits may be undone by a crash of the database server (within
        ~0.6 s of them), never by one of an iraas process; for what is redone anyway (claims,
        deletes, replies, heartbeats) or answered if lost (an input: `failed: input_missing`)."""
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            with self.pool(durable).connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise DatabaseError(f"database {self.shown}: {_why(exc)}") from None

    def _session(self, durable: bool = True) -> dict[str, Any]:
        """What every connection adds to the URL's parameters: `_SESSION`, the client's
        keepalives, and for `durable=False` commits that return before the server's WAL is
        flushed (a crash of the database server, not of any iraas process, may undo the last
        ~0.6 s of them). Options the URL gives (`?options=-c …`) are kept, after ours."""
        from psycopg.conninfo import conninfo_to_dict

        given = str(conninfo_to_dict(self.url).get("options") or "")
        ours = _SESSION + ("" if durable else " -c synchronous_commit=off")
        return {**_CLIENT, "options": f"{ours} {given}".strip()}

    def dedicated(self, durable: bool = True) -> Any:
        """A connection of its own, outside the pools (a listener kept for a process's life)."""
        psycopg = _psycopg()
        try:
            timeout = max(int(self.timeout_s), 2)
            return psycopg.connect(self.url, autocommit=True, connect_timeout=timeout, **self._session(durable))
        except psycopg.OperationalError as exc:
            raise DatabaseError(f"database {self.shown}: {_why(exc)}") from None

    def migrate(self) -> int:
        """Bring the schema to the newest version; the version it is at. On its own connection,
        not the pool's: a wrong URL or a server away is said at start in libpq's own words."""
        psycopg = _psycopg()
        try:
            timeout = max(int(self.timeout_s), 2)
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=timeout, **self._session())
        except psycopg.OperationalError as exc:
            raise DatabaseError(f"cannot connect to {self.shown}: {_why(exc)}") from None
        with conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS iraas_schema (version integer NOT NULL)")
            row = conn.execute("SELECT max(version) FROM iraas_schema").fetchone()
            at = int(row[0] or 0) if row else 0
            if at > len(MIGRATIONS):
                raise DatabaseError(
                    f"the database {self.shown} holds schema version {at}, newer than this iraas "
                    f"knows ({len(MIGRATIONS)}): run the release that made it, or a later one"
                )
            for version, sql in enumerate(MIGRATIONS[at:], start=at + 1):
                conn.execute(sql)
                conn.execute("INSERT INTO iraas_schema (version) VALUES (%s)", (version,))
                log.info("database %s: schema version %d", self.shown, version)
        return len(MIGRATIONS)

    def wait_for(self, channels: list[str], until: Callable[[Any], Any], timeout_s: float, poll_s: float) -> Any:
        """`until(conn)` until it returns something true or `timeout_s` passes; between tries,
        sleeps until a NOTIFY on one of `channels` (or `poll_s`: a lost notification only costs
        latency). Listening starts before the first try: a send after it cannot be missed."""
        deadline = time.monotonic() + timeout_s
        with self.connection(durable=False) as conn:
            for name in channels:
                conn.execute(f"LISTEN {name}")
            try:
                while True:
                    got = until(conn)
                    left = deadline - time.monotonic()
                    if got or left <= 0:
                        return got
                    for _ in conn.notifies(timeout=min(left, poll_s), stop_after=1):
                        pass
            finally:
                conn.execute("UNLISTEN *")

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                for pool in self._pools.values():
                    pool.close()
            self._pools = {}


def close_quietly(conn: Any) -> None:
    """Close a dedicated connection that may be broken already (its errors say nothing new)."""
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()


def _psycopg() -> Any:
    try:
        import psycopg
        import psycopg_pool  # noqa: F401 (the pool: checked now, used later)
    except ImportError:
        raise DatabaseError("PostgreSQL needs the postgres extra: pip install 'iraas[postgres]'") from None
    return psycopg


def _why(exc: BaseException) -> str:
    """An error's words without the connection string (libpq may quote it): its last line
    that says something ("connection refused", "password authentication failed for user …")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    core = lines[0].rsplit(" failed: ", 1)[-1]  # "connection to server at …, port … failed: X"
    return core[:300]
