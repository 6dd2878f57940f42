"""Reply channels: how a worker hands a result to the web process that waits for it.

A reply is a hint that saves a wait, never the record: the result is stored first (the store
layer does that), so a reply that cannot be delivered costs only latency. What matters is
telling "nobody waits there any more" (the web process is gone: drop it) from "try again"
(raise: the worker keeps the message, whose redelivery replies again from the stored result).

Embedded: one Unix datagram socket per web process — a send is one system call, no SQLite
transaction per image. AWS: one SQS queue per web process (`<name>-replies-<id>`). Several
hosts on PostgreSQL: the reply is the payload of a NOTIFY to the web process that waits (a row
only for one too large for a payload).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .pg import NOW, Database, DatabaseError, channel, close_quietly
from .queues.base import QueueMissing
from .sockets import bound, readable, remove_if_empty, socket_dir


class Inbox(Protocol):
    name: str

    def receive(self, wait_s: float) -> list[str]:
        """Replies that arrived, waiting up to `wait_s` for the first; [] when none came."""
        ...

    def close(self) -> None:
        """Stop receiving; later sends to this inbox return False."""
        ...


@runtime_checkable
class Pollable(Protocol):
    """An inbox that an event loop can watch itself: a reply wakes the loop directly, not a
    thread that then wakes the loop (a hand-over per reply saved)."""

    def fileno(self) -> int:
        """Readable when a reply has arrived; `receive(0)` then takes it without waiting."""
        ...


class Replies(Protocol):
    def send(self, to: str, body: str) -> bool:
        """Deliver `body` to the inbox `to`; False when no such inbox exists (nobody waits).
        Raises OSError or QueueError when the inbox exists but the reply could not be handed
        over (a full buffer, a throttled API): the caller may try again later."""
        ...

    def send_many(self, replies: Sequence[tuple[str, str]]) -> list[bool]:
        """`send` of each (inbox, body), in order (one statement where the channel has one:
        PostgreSQL); raises as `send` does, for all of them: the caller may send each again."""
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

    def send_many(self, replies: Sequence[tuple[str, str]]) -> list[bool]:
        return [self.send(to, body) for to, body in replies]

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

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)
        self._sock.close()
        remove_if_empty(Path(self._path).parent)


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

    def send_many(self, replies: Sequence[tuple[str, str]]) -> list[bool]:
        return [self.send(to, body) for to, body in replies]

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
    receives). A reply is sent only to a live inbox, in one statement: as the payload of a
    NOTIFY on the inbox's channel — no row written, none to take and delete (measured: that row
    and its removal were a fifth of the database server's work per image) — or, when it is too
    large for a payload, as a row whose empty NOTIFY tells the inbox to take it.

    A NOTIFY reaches only a session listening when it commits: while an inbox reconnects, the
    replies sent to it are lost. Its `receive` then raises, and the web process looks up the
    stored results of what it waits for once it listens again (`web/waiting.py`)."""

    def __init__(self, db: Database, *, alive_s: float = 30.0, poll_s: float = 1.0) -> None:
        """`alive_s`: an inbox not seen receiving for this long belongs to a process that is gone."""
        self.db, self.alive_s, self.poll_s = db, alive_s, poll_s

    def send(self, to: str, body: str) -> bool:
        # Not durable: a reply is a hint (the result is stored); a lost one costs a wait.
        talk = channel(_inbox_queue(to))
        with self.db.connection(durable=False) as conn:
            if len(body.encode()) <= MAX_PAYLOAD:
                row = conn.execute(
                    f"SELECT pg_notify(%s, %s) FROM iraas_inboxes WHERE name = %s AND seen_at > {NOW} - %s",
                    (talk, body, to, self.alive_s),
                ).fetchone()
                return row is not None
            row = conn.execute(
                "WITH sent AS (INSERT INTO iraas_messages (id, queue, body, sent_at, visible_at)"
                f" SELECT %s, %s, %s, {NOW}, {NOW} WHERE EXISTS"
                f" (SELECT 1 FROM iraas_inboxes WHERE name = %s AND seen_at > {NOW} - %s) RETURNING 1)"
                " SELECT count(*), pg_notify(%s, '') FROM sent",
                (uuid.uuid4(), _inbox_queue(to), body, to, self.alive_s, talk),
            ).fetchone()
        return bool(row and row[0])

    def send_many(self, replies: Sequence[tuple[str, str]]) -> list[bool]:
        if any(len(body.encode()) > MAX_PAYLOAD for _, body in replies):
            return [self.send(to, body) for to, body in replies]  # rare: a row each, in order
        if not replies:
            return []
        names = [to for to, _ in replies]
        # One statement for a worker's batch; a NOTIFY only where the inbox is live, in order
        # (a function scan yields its rows in order, and each row's CASE runs as it passes).
        with self.db.connection(durable=False) as conn:
            rows = conn.execute(
                "SELECT CASE WHEN EXISTS (SELECT 1 FROM iraas_inboxes b WHERE b.name = t.name"
                f" AND b.seen_at > {NOW} - %s) THEN (SELECT true FROM pg_notify(t.talk, t.body)) ELSE false END"
                " FROM unnest(%s::text[], %s::text[], %s::text[]) AS t(name, talk, body)",
                (self.alive_s, names, [channel(_inbox_queue(n)) for n in names], [body for _, body in replies]),
            ).fetchall()
        return [bool(r[0]) for r in rows]

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


# A NOTIFY payload must be shorter than 8000 bytes; a result is ~1 KB (a large one goes as a row).
MAX_PAYLOAD = 7900


class PostgresInbox:
    """Its own connection, listening for the whole life of the web process (not a pooled one
    and a LISTEN per wait: a reply is in the notification itself)."""

    def __init__(self, name: str, replies: PostgresReplies) -> None:
        self.name, self._replies = name, replies
        self._queue = _inbox_queue(name)
        self._seen = time.monotonic()
        self._conn: Any = None
        self._fresh = False
        self._listening()  # now: a reply sent from here on reaches this inbox

    def receive(self, wait_s: float) -> list[str]:
        import psycopg

        replies = self._replies
        try:
            conn = self._listening()
            if time.monotonic() - self._seen > replies.alive_s / 6:  # alive: keep receiving replies
                self._seen = time.monotonic()
                conn.execute(f"UPDATE iraas_inboxes SET seen_at = {NOW} WHERE name = %s", (self.name,))
            # Listening anew: rows sent meanwhile are kept (payloads are not: see the class).
            got, self._fresh = (self._take(conn) if self._fresh else []), False
            deadline = time.monotonic() + wait_s
            while not got and (left := deadline - time.monotonic()) > 0:
                got = self._read(conn, list(conn.notifies(timeout=min(left, replies.poll_s), stop_after=1)))
            if got:  # and whatever else has arrived by now, without waiting
                got += self._read(conn, list(conn.notifies(timeout=0)))
            return got
        except psycopg.Error as exc:
            self._drop()
            raise DatabaseError(f"reply inbox {self.name}: {str(exc).strip()[:200]}") from None

    def _read(self, conn: Any, notes: list[Any]) -> list[str]:
        """The replies `notes` carry, in the order they were sent; an empty one: take the rows."""
        got: list[str] = []
        for note in notes:
            got += [note.payload] if note.payload else self._take(conn)
        return got

    def _listening(self) -> Any:
        """The listening connection (a new one after a failure: `_fresh`)."""
        if self._conn is None or self._conn.closed:
            self._conn = self._replies.db.dedicated(durable=False)
            self._conn.execute(f"LISTEN {channel(self._queue)}")
            self._fresh = True
        return self._conn

    def _drop(self) -> None:
        close_quietly(self._conn)
        self._conn = None

    def _take(self, conn: Any) -> list[str]:
        rows = conn.execute(  # the rows picked once, as the queue's claim does (queues/postgres.py)
            "WITH picked AS MATERIALIZED (SELECT id FROM iraas_messages WHERE queue = %s"
            " ORDER BY sent_at LIMIT 1000 FOR UPDATE SKIP LOCKED)"
            " DELETE FROM iraas_messages m USING picked WHERE m.id = picked.id RETURNING m.sent_at, m.body",
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
