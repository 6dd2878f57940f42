"""One reply inbox per web process, and the futures of the requests that wait on it.

The event loop reads an inbox it can watch (the embedded socket: a reply wakes the loop, with
no thread between); a thread receives from any other (PostgreSQL, SQS) and resolves futures on
the event loop. There is no polling of the store for waiting requests: a worker deletes a
request only after its reply was handed over, so a reply lost to a worker's death comes again
with the redelivery (after the visibility timeout), answered from the stored result; dead
letters are answered by the controller. A reply lost on the way (the inbox's connection broke:
on PostgreSQL a NOTIFY reaches only a session listening when it is sent) is looked up once the
inbox receives again: the stored results of every request still waiting, read after the inbox
listens anew, so none can fall in between.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable

from ..messages import MessageError, Result
from ..replies import Pollable, Replies

log = logging.getLogger(__name__)


def _nothing_stored(rid: str) -> Result | None:
    return None


class ReplyWaiter:
    def __init__(
        self,
        replies: Replies,
        observe: Callable[[Result], None] = lambda _: None,
        stored: Callable[[str], Result | None] = _nothing_stored,
    ) -> None:
        """`observe` sees every reply, waited for or not (metrics); `stored(id)`: a request's
        stored result, for the replies an interrupted inbox may have missed."""
        self.name = uuid.uuid4().hex[:12]
        self.observe, self.stored = observe, stored
        self.inbox = replies.inbox(self.name)
        self._pending: dict[str, asyncio.Future[Result]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Call on `loop`'s thread."""
        self._loop = loop
        if isinstance(self.inbox, Pollable):
            loop.add_reader(self.inbox.fileno(), self._on_readable)
            return
        self._thread = threading.Thread(target=self._run, daemon=True, name="replies")
        self._thread.start()

    def stop(self) -> None:
        """Call on the loop's thread."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        elif self._loop is not None and isinstance(self.inbox, Pollable):
            self._loop.remove_reader(self.inbox.fileno())
        self.inbox.close()

    def _on_readable(self) -> None:
        try:
            bodies = self.inbox.receive(0)
        except Exception:  # a socket of our own: nothing here should fail, but keep the loop
            log.exception("reply loop error")
            return
        _settle(self._replied(bodies))

    def expect(self, request_id: str) -> asyncio.Future[Result]:
        """Call on the event loop, before the request is sent."""
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._pending[request_id] = fut
        return fut

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    def _run(self) -> None:
        missed = False  # replies may have been lost: the inbox failed since the last look-up
        while not self._stop.is_set():
            try:
                bodies = self.inbox.receive(wait_s=0.5)
            except Exception:  # keep answering: one bad poll must not end the thread
                log.exception("reply loop error")
                missed = True
                self._stop.wait(0.5)
                continue
            settled = self._replied(bodies)
            if missed:
                found = self._looked_up()
                missed = found is None  # the store is away too: look again after the next receive
                settled += found or []
            if settled and self._loop is not None:
                self._loop.call_soon_threadsafe(_settle, settled)

    def _replied(self, bodies: list[str]) -> list[tuple[asyncio.Future[Result], Result]]:
        results = []
        for body in bodies:
            try:
                result = Result.from_json(body)
            except (MessageError, TypeError):
                log.error("unreadable reply dropped: %.200s", body)
                continue
            try:
                self.observe(result)
            except Exception:
                log.exception("observing a reply failed")
            results.append(result)
        return self._claim(results)

    def _looked_up(self) -> list[tuple[asyncio.Future[Result], Result]] | None:
        """The waiting requests whose result is stored (their reply may never come); None if
        the store could not be read."""
        with self._lock:
            waiting = list(self._pending)
        try:
            return self._claim([r for rid in waiting if (r := self.stored(rid)) is not None])
        except Exception:
            log.warning("looking up %d waiting result(s) failed", len(waiting), exc_info=True)
            return None

    def _claim(self, results: list[Result]) -> list[tuple[asyncio.Future[Result], Result]]:
        """The futures still waiting for these results, each taken once, with its result."""
        with self._lock:
            taken = [(self._pending.pop(r.id, None), r) for r in results]
        return [(fut, r) for fut, r in taken if fut is not None]


def _settle(settled: list[tuple[asyncio.Future[Result], Result]]) -> None:
    for fut, result in settled:
        if not fut.done():  # the waiter may have timed out and gone
            fut.set_result(result)
