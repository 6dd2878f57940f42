"""The request-queue protocol, with SQS semantics.

At-least-once delivery: a received message is hidden for `visibility_s`, then delivered again
unless it was deleted. Every delivery has a new receipt; only the latest receipt can delete
the message or change its visibility. A queue with a dead-letter queue moves a message there
instead of delivering it for the (`max_receives` + 1)-th time, as SQS redrive does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

MAX_BATCH = 10
MAX_WAIT_S = 20
MAX_VISIBILITY_S = 43_200
MAX_DELAY_S = 900
MAX_BODY_BYTES = 262_144  # SQS's classic limit; the one every region and emulator accepts


class QueueError(Exception):
    """A queue operation failed: the queue is locked, unreachable or refusing. Callers try again
    later (a worker after a second; the web tier answers 503 with Retry-After)."""


class QueueMissing(QueueError):
    """The queue does not exist (for a reply queue: nobody waits there any more)."""


class QueueDenied(QueueError, PermissionError):
    """The queue refused the call: this process may not (a configuration error)."""


class QueueParamError(QueueError, ValueError):
    """A parameter outside what SQS accepts; the message says which and why."""


@dataclass(frozen=True)
class Message:
    id: str
    body: str
    receipt: str
    receive_count: int  # 1 on the first delivery
    sent_at: float  # epoch seconds of the first send


@dataclass(frozen=True)
class Depth:
    visible: int
    in_flight: int
    delayed: int = 0
    oldest_age_s: float | None = None  # of the oldest message in the queue; None: not known (SQS)

    @property
    def backlog(self) -> int:
        """Work not finished yet: waiting plus being worked on (KEDA's SQS measure)."""
        return self.visible + self.in_flight


class Queue(Protocol):
    name: str

    @property
    def dead_letter(self) -> Queue | None:
        """The dead-letter queue, or None when redrive is off."""
        ...

    def send(self, body: str, delay_s: int = 0) -> str:
        """Enqueue one message; returns its id."""
        ...

    def send_batch(self, bodies: Sequence[str]) -> list[str]:
        """Enqueue 1-10 messages at once; all or none (raises on failure); returns their ids."""
        ...

    def receive(self, max_messages: int = 1, wait_s: float = 0, visibility_s: int = 30) -> list[Message]:
        """Up to `max_messages` visible messages, hidden for `visibility_s` from now. Blocks up to
        `wait_s` while none is visible (long polling) and returns as soon as one arrives;
        returns [] when the wait ends empty."""
        ...

    def delete(self, receipt: str) -> None:
        """Remove the message received with this receipt. A stale receipt (the message was
        delivered again since) or an already deleted message: no effect, no error."""
        ...

    def delete_batch(self, receipts: Sequence[str]) -> None:
        """`delete` for 1-10 receipts."""
        ...

    def change_visibility(self, receipt: str, visibility_s: int) -> bool:
        """Hide the message for `visibility_s` from now (0 releases it at once). False when the
        receipt is stale or the message is gone."""
        ...

    def release(self, receipts: Sequence[str]) -> None:
        """Give 1-10 received messages back untouched, visible at once (a worker that is
        stopping, or that keeps one redelivered message of a batch). The embedded queue does
        not count such a delivery against `max_receives`; SQS cannot take a receive back
        (ApproximateReceiveCount only grows), so there each hand-back costs one. Stale
        receipts are ignored."""
        ...

    def writable(self) -> None:
        """Raises QueueError unless a message could be sent now (readiness)."""
        ...

    def depth(self) -> Depth:
        """Approximate counts (exact on SQLite, which also tells the oldest message's age)."""
        ...

    def purge(self) -> None:
        """Remove every message."""
        ...

    def wakeups(self) -> AbstractContextManager[Callable[[float], bool] | None]:
        """For a watcher of the queue (the controller): a wait that ends early on a send and
        says whether one came; None where the backend cannot tell (SQS: poll instead)."""
        ...


def check_receive(max_messages: int, wait_s: float, visibility_s: int) -> None:
    if not 1 <= max_messages <= MAX_BATCH:
        raise QueueParamError(f"max_messages must be 1-{MAX_BATCH}, got {max_messages}")
    if not 0 <= wait_s <= MAX_WAIT_S:
        raise QueueParamError(f"wait_s must be 0-{MAX_WAIT_S} seconds, got {wait_s}")
    check_visibility(visibility_s)


def check_visibility(visibility_s: int) -> None:
    if not 0 <= visibility_s <= MAX_VISIBILITY_S:
        raise QueueParamError(f"visibility_s must be 0-{MAX_VISIBILITY_S} seconds, got {visibility_s}")


def check_send(bodies: Sequence[str], delay_s: int = 0) -> None:
    if not 1 <= len(bodies) <= MAX_BATCH:
        raise QueueParamError(f"a batch holds 1-{MAX_BATCH} messages, got {len(bodies)}")
    if not 0 <= delay_s <= MAX_DELAY_S:
        raise QueueParamError(f"delay_s must be 0-{MAX_DELAY_S} seconds, got {delay_s}")
    for body in bodies:
        if not isinstance(body, str) or not body:
            raise QueueParamError("a message body must be a non-empty string")
        if len(body.encode()) > MAX_BODY_BYTES:
            raise QueueParamError(f"message body is {len(body.encode())} bytes, over the {MAX_BODY_BYTES} limit")


def check_receipts(receipts: Sequence[str]) -> None:
    if not 1 <= len(receipts) <= MAX_BATCH:
        raise QueueParamError(f"a batch holds 1-{MAX_BATCH} receipts, got {len(receipts)}")
