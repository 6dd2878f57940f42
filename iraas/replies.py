"""Reply channels: how a worker hands a result to the web process that waits for it.

A reply is a hint that saves a wait, never the record: the result is stored first (the store
layer does that), so a reply that cannot be delivered costs only latency. What matters is
telling "nobody waits there any more" (the web process is gone: drop it) from "try again"
(raise: the worker keeps the message, whose redelivery replies again from the stored result).

Embedded: one Unix datagram socket per web process — a send is one system call, no SQLite
transaction per image. AWS: one SQS queue per web process (`<name>-replies-<id>`). Several
hosts on PostgreSQL: a row per reply, its NOTIFY waking the web process that waits.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from .pg import NOW, Database, DatabaseError, channel, close_quietly
from .queues.base import QueueMissing
from .sockets import bound, readable, socket_dir


class Inbox(Protocol):
    name: str

    def receive(self, wait_s: float) -> list[str]:
        """Replies that arrived, waiting up to `wait_s` for the first; [] when none came."""
        ...

    def close(self) -> None:
        """Stop receiving; later sends to this inbox return False."""
        ...


class Replies(Protocol):
    def send(self, to: str, body: str) -> bool:
        """Deliver `body` to the inbox `to`; False when no such inbox exists (nobody waits).
        Raises OSError or QueueError when the inbox exists but the reply could not be handed
        over (a full buffer, a throttled API): the caller may try again later."""
        ...

    def inbox(self, name: str) -> Inbox:
        """Open the inbox `name` for this process."""
        ...


# -- embedded: Unix datagram sockets -------------------------------------------------------

_MAX_DATAGRAM = 256 * 1024


class SocketReplies:
    """Inboxes are sockets in a directory derived from the data directory (under the temp
    directory: socket paths are limited to ~100 bytes)."""

    def __init__(self, data_dir: Path, send_timeout_s: float = 5.0) -> None:
        self.dir = socket_dir("replies", data_dir)
        self.send_timeout_s = send_timeout_s

    def _path(self, name: str) -> str:
        if not name.replace("-", "").isalnum():
            raise ValueError(f"bad inbox name {name!r}")
        return str(self.dir / name)

    def send(self, to: str, body: str) -> bool:
        # A socket per send (microseconds): nothing to close, nothing to cross a fork().
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
            out.settimeout(self.send_timeout_s)  # a full inbox blocks the sender, this long at most
            try:
                out.sendto(body.encode(), self._path(to))
            except (FileNotFoundError, ConnectionRefusedError):
                return False  # no such inbox, or its process died without unlinking it
        return True

    def inbox(self, name: str) -> SocketInbox:
        return SocketInbox(name, self._path(name))


class SocketInbox:
    def __init__(self, name: str, path: str) -> None:
        self.name, self._path = name, path
        self._sock = bound(Path(path), receive_buffer=4 * 1024 * 1024)

    def receive(self, wait_s: float) -> list[str]:
        out: list[str] = []
        if not readable(self._sock, wait_s):
            return out
        with contextlib.suppress(BlockingIOError):
            while len(out) < 1000:
                out.append(self._sock.recv(_MAX_DATAGRAM).decode())
        return out

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)
        self._sock.close()


# -- AWS: one SQS queue per web process ------------------------------------------------------


class SqsReplies:
    def __init__(self, client: Any, prefix: str) -> None:
        self.client, self.prefix = client, prefix
        self._find = lru_cache(maxsize=64)(self._queue)

    def _queue(self, name: str, create: bool = False) -> Any:
        from .queues.sqs import SqsQueue

        return SqsQueue(self.client, f"{self.prefix}-{name}", create=create)

    def send(self, to: str, body: str) -> bool:
        queue = self._find(to)
        try:
            queue.send(body)
        except QueueMissing:
            return False  # the web process stopped and its queue was deleted
        return True

    def inbox(self, name: str) -> SqsInbox:
        return SqsInbox(name, self._queue(name, create=True))


class SqsInbox:
    def __init__(self, name: str, queue: Any) -> None:
        self.name, self._queue = name, queue

    def receive(self, wait_s: float) -> list[str]:
        msgs = self._queue.receive(10, wait_s=wait_s, visibility_s=30)
        if msgs:
            self._queue.delete_batch([m.receipt for m in msgs])
        return [m.body for m in msgs]

    def close(self) -> None:
        # Purged, not deleted: SQS forbids re-creating a deleted name for 60 s, and
        # `iraas aws destroy` deletes every reply queue of the deployment.
        self._queue.purge()


# -- several hosts: PostgreSQL, woken by NOTIFY -------------------------------------------------


class PostgresReplies:
    """Inboxes registered in `iraas_inboxes` (each web process refreshes its own while it
    receives); a reply is a row for its inbox, sent in one statement only if that inbox is
    alive, and its NOTIFY wakes the waiting web process on whichever host it runs."""

    def __init__(self, db: Database, *, alive_s: float = 30.0, poll_s: float = 1.0) -> None:
        """`alive_s`: an inbox not seen receiving for this long belongs to a process that is gone."""
        self.db, self.alive_s, self.poll_s = db, alive_s, poll_s

    def send(self, to: str, body: str) -> bool:
        # One statement (one round trip): the row, only for a live inbox, and its NOTIFY. Not
        # durable: a reply is a hint (the result is stored); a lost one costs a redelivery's wait.
        with self.db.connection(durable=False) as conn:
            row = conn.execute(
                "WITH sent AS (INSERT INTO iraas_messages (id, queue, body, sent_at, visible_at)"
                f" SELECT %s, %s, %s, {NOW}, {NOW} WHERE EXISTS"
                f" (SELECT 1 FROM iraas_inboxes WHERE name = %s AND seen_at > {NOW} - %s) RETURNING 1)"
                " SELECT count(*), pg_notify(%s, '') FROM sent",
                (uuid.uuid4(), _inbox_queue(to), body, to, self.alive_s, channel(_inbox_queue(to))),
            ).fetchone()
        return bool(row and row[0])

    def inbox(self, name: str) -> PostgresInbox:
        with self.db.connection() as conn, conn.transaction():
            conn.execute(
                f"INSERT INTO iraas_inboxes (name, seen_at) VALUES (%s, {NOW})"
                " ON CONFLICT (name) DO UPDATE SET seen_at = EXCLUDED.seen_at",
                (name,),
            )
            # The inboxes of processes long gone, and what was sent to them, go with the next start.
            gone = conn.execute(
                f"DELETE FROM iraas_inboxes WHERE seen_at < {NOW} - %s RETURNING name", (max(self.alive_s, 3600),)
            ).fetchall()
            if gone:
                conn.execute("DELETE FROM iraas_messages WHERE queue = ANY(%s)", ([_inbox_queue(r[0]) for r in gone],))
        return PostgresInbox(name, self)


class PostgresInbox:
    """Its own connection, listening for the whole life of the web process (not a pooled one
    and a LISTEN per wait: a reply is one round trip to take, after its NOTIFY)."""

    def __init__(self, name: str, replies: PostgresReplies) -> None:
        self.name, self._replies = name, replies
        self._queue = _inbox_queue(name)
        self._seen = time.monotonic()
        self._conn: Any = None

    def receive(self, wait_s: float) -> list[str]:
        import psycopg

        replies = self._replies
        try:
            conn = self._listening()
            if time.monotonic() - self._seen > replies.alive_s / 6:  # alive: keep receiving replies
                self._seen = time.monotonic()
                conn.execute(f"UPDATE iraas_inboxes SET seen_at = {NOW} WHERE name = %s", (self.name,))
            deadline = time.monotonic() + wait_s
            got = self._take(conn)
            # A notification may be for a reply taken already (one take empties the inbox):
            # wait on until one brings something, or the wait is over.
            while not got and (left := deadline - time.monotonic()) > 0:
                for _ in conn.notifies(timeout=min(left, replies.poll_s), stop_after=1):
                    pass
                got = self._take(conn)
        except psycopg.Error as exc:
            self._drop()
            raise DatabaseError(f"reply inbox {self.name}: {str(exc).strip()[:200]}") from None
        return got

    def _listening(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = self._replies.db.dedicated(durable=False)
            self._conn.execute(f"LISTEN {channel(self._queue)}")
        return self._conn

    def _drop(self) -> None:
        close_quietly(self._conn)
        self._conn = None

    def _take(self, conn: Any) -> list[str]:
        rows = conn.execute(
            "DELETE FROM iraas_messages WHERE id IN (SELECT id FROM iraas_messages WHERE queue = %s"
            " ORDER BY sent_at LIMIT 1000 FOR UPDATE SKIP LOCKED) RETURNING sent_at, body",
            (self._queue,),
        ).fetchall()
        return [body for _, body in sorted(rows, key=lambda r: r[0])]

    def close(self) -> None:
        self._drop()
        with self._replies.db.connection() as conn, conn.transaction():
            conn.execute("DELETE FROM iraas_inboxes WHERE name = %s", (self.name,))
            conn.execute("DELETE FROM iraas_messages WHERE queue = %s", (self._queue,))


def _inbox_queue(name: str) -> str:
    return f"reply:{name}"
