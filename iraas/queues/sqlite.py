"""The embedded queue: one SQLite file shared by every process of the service.

Every operation is one short transaction (sqlitedb.py: WAL, the write lock taken up front), so a
process killed at any point leaves each message either sent or not, claimed or not: nothing
half-done. Any process crash is survived; a power loss may drop the last commits, except sends
made with `durable_sends` (their commit waits for the disk).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..sqlitedb import LOCK_TIMEOUT_S, SqliteFile
from .base import (
    Depth,
    Message,
    QueueError,
    check_receipts,
    check_receive,
    check_send,
    check_visibility,
)
from .wake import Waker

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    receipt TEXT,
    receive_count INTEGER NOT NULL DEFAULT 0,
    sent_at REAL NOT NULL,
    visible_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, visible_at);
CREATE INDEX IF NOT EXISTS messages_receipt ON messages (receipt);
"""


class SqliteQueue:
    """A named queue in a SQLite file; many queues (and their dead-letter queues) share a file.

    `max_receives` turns on redrive to the queue named `<name>-dlq` in the same file.
    `clock` is wall time (messages are shared between processes); `poll_s` bounds how long a
    long poll sleeps between checks when no wake-up arrives. A send survives any process's
    crash; `durable_sends`: a power cut too (its commit waits for the disk, and concurrent
    senders share it through the group commit of `queues/group.py`).
    """

    def __init__(
        self,
        path: str | Path,
        name: str,
        *,
        max_receives: int | None = None,
        clock: Callable[[], float] = time.time,
        poll_s: float = 0.5,
        lock_timeout_s: float = LOCK_TIMEOUT_S,
        durable_sends: bool = False,
    ) -> None:
        self.path = Path(path)
        self.durable_sends = durable_sends
        self.lock_timeout_s = lock_timeout_s
        self.name = name
        self.max_receives = max_receives
        self._clock = clock
        self._poll_s = poll_s
        self._db = SqliteFile(self.path, _SCHEMA, QueueError, lock_timeout_s)
        self._waker = Waker(self.path, name)
        self._dlq = (
            SqliteQueue(path, f"{name}-dlq", clock=clock, poll_s=poll_s, lock_timeout_s=lock_timeout_s)
            if max_receives
            else None
        )

    @property
    def dead_letter(self) -> SqliteQueue | None:
        return self._dlq

    # -- sending ----------------------------------------------------------------------------

    def send(self, body: str, delay_s: int = 0) -> str:
        check_send([body], delay_s)
        return self._insert([body], delay_s)[0]

    def send_batch(self, bodies: Sequence[str]) -> list[str]:
        check_send(bodies)
        return self._insert(bodies, 0)

    def _insert(self, bodies: Sequence[str], delay_s: int) -> list[str]:
        now = self._clock()
        rows = [(uuid.uuid4().hex, self.name, body, now, now + delay_s) for body in bodies]
        with self._db.tx(durable=self.durable_sends) as db:
            db.executemany("INSERT INTO messages (id, queue, body, sent_at, visible_at) VALUES (?,?,?,?,?)", rows)
        self._waker.notify(len(rows))
        return [r[0] for r in rows]

    # -- receiving --------------------------------------------------------------------------

    def receive(self, max_messages: int = 1, wait_s: float = 0, visibility_s: int = 30) -> list[Message]:
        check_receive(max_messages, wait_s, visibility_s)
        got = self._claim(max_messages, visibility_s)
        if got or wait_s <= 0:
            return got
        deadline = time.monotonic() + wait_s
        with self._waker.listening() as sock:
            while True:
                # Listening before this check: a send after it cannot be missed.
                got = self._claim(max_messages, visibility_s)
                remaining = deadline - time.monotonic()
                if got or remaining <= 0:
                    return got
                Waker.wait(sock, min(remaining, self._poll_s, self._next_visible_in()))

    @contextmanager
    def wakeups(self) -> Iterator[Callable[[float], bool] | None]:
        with self._waker.listening(watcher=True) as sock:
            yield lambda timeout: Waker.wait(sock, timeout)

    def _claim(self, n: int, visibility_s: int) -> list[Message]:
        now = self._clock()
        out: list[Message] = []
        moved = 0
        with self._db.tx() as db:
            while len(out) < n:
                rows = db.execute(
                    "SELECT id, body, receive_count, sent_at FROM messages"
                    " WHERE queue = ? AND visible_at <= ? ORDER BY visible_at LIMIT ?",
                    (self.name, now, n - len(out)),
                ).fetchall()
                if not rows:
                    break
                for msg_id, body, count, sent_at in rows:
                    if self._dlq is not None and self.max_receives is not None and count >= self.max_receives:
                        db.execute(
                            "UPDATE messages SET queue = ?, receipt = NULL, visible_at = ? WHERE id = ?",
                            (self._dlq.name, now, msg_id),
                        )
                        moved += 1
                        continue
                    receipt = uuid.uuid4().hex
                    db.execute(
                        "UPDATE messages SET receipt = ?, receive_count = ?, visible_at = ? WHERE id = ?",
                        (receipt, count + 1, now + visibility_s, msg_id),
                    )
                    out.append(Message(id=msg_id, body=body, receipt=receipt, receive_count=count + 1, sent_at=sent_at))
        if moved and self._dlq is not None:
            log.info(
                "moved %d message(s) from %s to %s after %s receives",
                moved,
                self.name,
                self._dlq.name,
                self.max_receives,
            )
            self._dlq._waker.notify(moved)
        return out

    def _next_visible_in(self) -> float:
        """Seconds until the earliest hidden message becomes visible again (inf if none)."""
        with self._db.read() as db:
            row = db.execute("SELECT MIN(visible_at) FROM messages WHERE queue = ?", (self.name,)).fetchone()
        return float("inf") if row[0] is None else max(row[0] - self._clock(), 0.0)

    # -- acknowledging ----------------------------------------------------------------------

    def delete(self, receipt: str) -> None:
        self.delete_batch([receipt])

    def delete_batch(self, receipts: Sequence[str]) -> None:
        check_receipts(receipts)
        with self._db.tx() as db:
            db.executemany("DELETE FROM messages WHERE queue = ? AND receipt = ?", [(self.name, r) for r in receipts])

    def change_visibility(self, receipt: str, visibility_s: int) -> bool:
        check_visibility(visibility_s)
        with self._db.tx() as db:
            cur = db.execute(
                "UPDATE messages SET visible_at = ? WHERE queue = ? AND receipt = ?",
                (self._clock() + visibility_s, self.name, receipt),
            )
            changed = cur.rowcount == 1
        if changed and visibility_s == 0:
            self._waker.notify()
        return changed

    def release(self, receipts: Sequence[str]) -> None:
        check_receipts(receipts)
        now = self._clock()
        with self._db.tx() as db:
            # A fresh receipt-less state: the old receipts can no longer delete or extend it.
            db.executemany(
                "UPDATE messages SET visible_at = ?, receipt = NULL, receive_count = MAX(receive_count - 1, 0)"
                " WHERE queue = ? AND receipt = ?",
                [(now, self.name, r) for r in receipts],
            )
        self._waker.notify(len(receipts))

    def writable(self) -> None:
        with self._db.tx():
            pass  # BEGIN IMMEDIATE takes the write lock: a held lock fails after lock_timeout_s

    # -- inspecting -------------------------------------------------------------------------

    def depth(self) -> Depth:
        with self._db.read() as db:
            row = db.execute(
                "SELECT COALESCE(SUM(visible_at <= :now), 0),"
                " COALESCE(SUM(visible_at > :now AND receive_count > 0), 0),"
                " COALESCE(SUM(visible_at > :now AND receive_count = 0), 0),"
                " MIN(sent_at)"
                " FROM messages WHERE queue = :q",
                {"now": self._clock(), "q": self.name},
            ).fetchone()
        oldest = max(self._clock() - row[3], 0.0) if row[3] is not None else 0.0
        return Depth(int(row[0]), int(row[1]), int(row[2]), round(oldest, 3))

    def purge(self) -> None:
        with self._db.tx() as db:
            db.execute("DELETE FROM messages WHERE queue = ?", (self.name,))

    def close(self) -> None:
        if self._dlq is not None:
            self._dlq.close()
        self._db.close()
        self._waker.close()
