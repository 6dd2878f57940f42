"""A queue in PostgreSQL, for a deployment on several hosts (procrastinate and Oban are the model).

Messages are rows of `iraas_messages` (pg.py makes the schema). A receive claims up to ten
visible rows in one statement with `FOR UPDATE SKIP LOCKED`, so concurrent receivers on any
host never take the same message and never wait on each other; a long poll sleeps on LISTEN
until a sender's NOTIFY (sent in the sender's transaction, so delivered on its commit).
Semantics as the queue contract suite defines them: at-least-once, visibility timeout, receive
count, dead letters after `max_receives` (moved to `<name>-dlq` in the same table), depth with
in-flight and delayed messages, the oldest message's age.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..pg import NOW, Database, DatabaseError, channel
from .base import (
    Depth,
    Message,
    QueueError,
    check_receipts,
    check_receive,
    check_send,
    check_visibility,
)

log = logging.getLogger(__name__)

# One statement, one round trip, its own transaction: visible messages past `max_receives` go to
# the dead-letter queue (notified), up to `n` others are claimed. The last row always comes: the
# count moved, with the claimed message's columns or NULLs. The `n` are picked in a CTE of their
# own, run once: as `WHERE id IN (… LIMIT n FOR UPDATE SKIP LOCKED)` the planner may re-run the
# subquery for each row it joins (a nested loop, chosen on statistics taken while the table was
# nearly empty), and each run skips the rows the statement has just claimed and locks n more:
# one receive of 4 took a backlog of 101 (tests/test_postgres.py).
_RECEIVE = f"""
WITH dead AS (
    UPDATE iraas_messages SET queue = %(dlq)s, receipt = NULL, visible_at = {NOW}
    WHERE id IN (
        SELECT id FROM iraas_messages
        WHERE queue = %(q)s AND visible_at <= {NOW} AND receive_count >= %(max)s
        FOR UPDATE SKIP LOCKED
    )
    RETURNING 1
), woken AS (
    SELECT pg_notify(%(dlq_channel)s, '') FROM (SELECT 1) one WHERE EXISTS (SELECT 1 FROM dead)
), picked AS MATERIALIZED (
    SELECT id FROM iraas_messages
    WHERE queue = %(q)s AND visible_at <= {NOW} AND receive_count < %(max)s
    ORDER BY visible_at LIMIT %(n)s FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE iraas_messages m SET receipt = gen_random_uuid(), receive_count = m.receive_count + 1,
        visible_at = {NOW} + %(vis)s
    FROM picked WHERE m.id = picked.id
    RETURNING m.id, m.body, m.receipt, m.receive_count, m.sent_at
)
SELECT c.id, c.body, c.receipt, c.receive_count, c.sent_at,
    (SELECT count(*) FROM dead), (SELECT count(*) FROM woken)
FROM (SELECT 1) one LEFT JOIN claimed c ON true
"""
# Sending is one statement too: the rows and their NOTIFY commit together.
_SEND = f"""
WITH sent AS (
    INSERT INTO iraas_messages (id, queue, body, sent_at, visible_at)
    SELECT id, %(q)s, body, {NOW}, {NOW} + %(delay)s FROM unnest(%(ids)s::uuid[], %(bodies)s::text[]) AS t(id, body)
    RETURNING 1
)
SELECT count(*), pg_notify(%(channel)s, '') FROM sent
"""
# A change of visibility and a release are one statement each too, never a transaction of
# several: a worker cut off between its BEGIN and COMMIT would leave the row locked, and every
# receiver skips a locked row (pg.py also ends such a session within seconds).
_CHANGE_VISIBILITY = f"""
WITH changed AS (
    UPDATE iraas_messages SET visible_at = {NOW} + %(vis)s WHERE queue = %(q)s AND receipt = %(r)s
    RETURNING 1
), woken AS (
    SELECT pg_notify(%(channel)s, '') FROM (SELECT 1) one WHERE %(vis)s = 0 AND EXISTS (SELECT 1 FROM changed)
)
SELECT (SELECT count(*) FROM changed), (SELECT count(*) FROM woken)
"""
_RELEASE = f"""
WITH released AS (
    UPDATE iraas_messages SET visible_at = {NOW}, receipt = NULL, receive_count = GREATEST(receive_count - 1, 0)
    WHERE queue = %s AND receipt = ANY(%s)
    RETURNING 1
)
SELECT (SELECT count(*) FROM released), pg_notify(%s, '')
"""
_NO_LIMIT = 2**31 - 1


def backlog_sql(name: str) -> str:
    """The backlog of queue `name` that a scaler outside iraas sizes a fleet on (KEDA's
    PostgreSQL trigger, deploy/helm/iraas): the messages visible or in a worker's hands, as
    `depth()` counts them; delayed ones are not work yet. The chart carries this text."""
    if not name.replace("-", "").isalnum():
        raise ValueError(f"a queue name is letters, digits and dashes, not {name!r}")
    return f"SELECT count(*) FROM iraas_messages WHERE queue = '{name}' AND (visible_at <= {NOW} OR receive_count > 0)"


class PostgresQueue:
    """A named queue in the deployment's database; `max_receives` turns on redrive to
    `<name>-dlq`. `poll_s` bounds a long poll's sleep when no notification comes."""

    def __init__(self, db: Database, name: str, *, max_receives: int | None = None, poll_s: float = 1.0) -> None:
        self.db, self.name, self.max_receives, self._poll_s = db, name, max_receives, poll_s
        self._channel = channel(f"queue:{name}")
        self._dlq = PostgresQueue(db, f"{name}-dlq", poll_s=poll_s) if max_receives else None

    @property
    def dead_letter(self) -> PostgresQueue | None:
        return self._dlq

    @contextmanager
    def _conn(self, durable: bool = True) -> Iterator[Any]:
        """Only a send must outlive a database crash: a claim, a delete or a visibility change
        lost with one is redone (the message comes back; the first result stored wins)."""
        try:
            with self.db.connection(durable) as conn:
                yield conn
        except DatabaseError as exc:
            raise QueueError(str(exc)) from None

    # -- sending ----------------------------------------------------------------------------

    def send(self, body: str, delay_s: int = 0) -> str:
        check_send([body], delay_s)
        return self._insert([body], delay_s)[0]

    def send_batch(self, bodies: Sequence[str]) -> list[str]:
        check_send(bodies)
        return self._insert(bodies, 0)

    def _insert(self, bodies: Sequence[str], delay_s: int) -> list[str]:
        ids = [uuid.uuid4() for _ in bodies]
        params = {"q": self.name, "delay": delay_s, "ids": ids, "bodies": list(bodies), "channel": self._channel}
        with self._conn() as conn:
            conn.execute(_SEND, params)
        return [i.hex for i in ids]

    # -- receiving --------------------------------------------------------------------------

    def receive(self, max_messages: int = 1, wait_s: float = 0, visibility_s: int = 30) -> list[Message]:
        check_receive(max_messages, wait_s, visibility_s)

        def claim(conn: Any) -> list[Message]:
            return self._claim(conn, max_messages, visibility_s)

        with self._conn(durable=False) as conn:
            got = claim(conn)
        if got or wait_s <= 0:
            return got
        try:
            found: list[Message] = self.db.wait_for([self._channel], claim, wait_s, self._poll_s)
        except DatabaseError as exc:
            raise QueueError(str(exc)) from None
        return found

    def _claim(self, conn: Any, n: int, visibility_s: int) -> list[Message]:
        limit = self.max_receives if self._dlq is not None and self.max_receives else _NO_LIMIT
        dlq = self._dlq.name if self._dlq is not None else ""
        dlq_channel = self._dlq._channel if self._dlq is not None else ""
        params = {"q": self.name, "max": limit, "n": n, "vis": visibility_s, "dlq": dlq, "dlq_channel": dlq_channel}
        rows = conn.execute(_RECEIVE, params).fetchall()
        moved = int(rows[0][5]) if rows else 0
        if moved:
            log.info("moved %d message(s) from %s to %s after %s receives", moved, self.name, dlq, limit)
        got = [r for r in rows if r[0] is not None]
        return [
            Message(id=r[0].hex, body=r[1], receipt=r[2].hex, receive_count=r[3], sent_at=r[4])
            for r in sorted(got, key=lambda r: r[4])
        ]

    @contextmanager
    def wakeups(self) -> Iterator[Callable[[float], bool] | None]:
        with self._conn(durable=False) as conn:
            conn.execute(f"LISTEN {self._channel}")
            try:
                yield lambda timeout: any(True for _ in conn.notifies(timeout=max(timeout, 0.0), stop_after=1))
            finally:
                conn.execute("UNLISTEN *")

    # -- acknowledging ----------------------------------------------------------------------

    def delete(self, receipt: str) -> None:
        self.delete_batch([receipt])

    def delete_batch(self, receipts: Sequence[str]) -> None:
        check_receipts(receipts)
        with self._conn(durable=False) as conn:
            conn.execute(
                "DELETE FROM iraas_messages WHERE queue = %s AND receipt = ANY(%s)",
                (self.name, [_uuid(r) for r in receipts if _uuid(r)]),
            )

    def change_visibility(self, receipt: str, visibility_s: int) -> bool:
        check_visibility(visibility_s)
        if not _uuid(receipt):
            return False
        params = {"q": self.name, "r": _uuid(receipt), "vis": visibility_s, "channel": self._channel}
        with self._conn(durable=False) as conn:
            row = conn.execute(_CHANGE_VISIBILITY, params).fetchone()
        return bool(row and row[0] == 1)

    def release(self, receipts: Sequence[str]) -> None:
        check_receipts(receipts)
        # A fresh receipt-less state: the old receipts can no longer delete or extend it.
        with self._conn(durable=False) as conn:
            conn.execute(_RELEASE, (self.name, [_uuid(r) for r in receipts if _uuid(r)], self._channel))

    def writable(self) -> None:
        with self._conn() as conn:
            conn.execute("SELECT 1 FROM iraas_messages LIMIT 0")

    # -- inspecting -------------------------------------------------------------------------

    def depth(self) -> Depth:
        with self._conn(durable=False) as conn:
            row = conn.execute(
                f"SELECT count(*) FILTER (WHERE visible_at <= {NOW}),"
                f" count(*) FILTER (WHERE visible_at > {NOW} AND receive_count > 0),"
                f" count(*) FILTER (WHERE visible_at > {NOW} AND receive_count = 0),"
                f" {NOW} - min(sent_at)"
                " FROM iraas_messages WHERE queue = %s",
                (self.name,),
            ).fetchone()
        oldest = max(float(row[3]), 0.0) if row[3] is not None else 0.0
        return Depth(int(row[0]), int(row[1]), int(row[2]), round(oldest, 3))

    def purge(self) -> None:
        with self._conn(durable=False) as conn:
            conn.execute("DELETE FROM iraas_messages WHERE queue = %s", (self.name,))


def _uuid(receipt: str) -> uuid.UUID | None:
    """A receipt as the database keeps it; None for one that cannot be ours (never matches)."""
    try:
        return uuid.UUID(hex=receipt)
    except ValueError:
        return None
