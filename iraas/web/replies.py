"""One reply queue per web process, and the futures of the requests that wait on it.

A thread long-polls the reply queue and resolves futures on the event loop. If a reply is lost
(a worker died between storing the result and replying), the result in the blob store
answers: pending requests are checked there every `fallback_s`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid

from ..backends import Backends
from ..blobs.base import BlobNotFound
from ..messages import MessageError, Result, result_key

log = logging.getLogger(__name__)


class ReplyWaiter:
    def __init__(self, backends: Backends, fallback_s: float = 2.0) -> None:
        self.b = backends
        self.name = f"replies-{uuid.uuid4().hex[:12]}"
        self.queue = backends.queue(self.name)
        self.fallback_s = fallback_s
        self._pending: dict[str, tuple[asyncio.Future[Result], float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, daemon=True, name="replies")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self.queue.purge()

    def expect(self, request_id: str) -> asyncio.Future[Result]:
        """Call on the event loop, before the request is sent."""
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._pending[request_id] = (fut, time.monotonic())
        return fut

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    def _resolve(self, result: Result) -> None:
        with self._lock:
            entry = self._pending.pop(result.id, None)
        if entry is not None and self._loop is not None:
            fut = entry[0]
            self._loop.call_soon_threadsafe(_settle, fut, result)

    def _run(self) -> None:
        last_check = time.monotonic()
        while not self._stop.is_set():
            try:
                msgs = self.queue.receive(10, wait_s=0.5, visibility_s=30)
                for m in msgs:
                    try:
                        self._resolve(Result.from_json(m.body))
                    except (MessageError, TypeError):
                        log.error("unreadable reply dropped: %.200s", m.body)
                if msgs:
                    self.queue.delete_batch([m.receipt for m in msgs])
                if time.monotonic() - last_check >= self.fallback_s:
                    last_check = time.monotonic()
                    self._check_store()
            except Exception:  # keep answering: one bad poll must not end the thread
                log.exception("reply loop error")
                self._stop.wait(0.5)

    def _check_store(self) -> None:
        now = time.monotonic()
        with self._lock:
            old = [rid for rid, (_, at) in self._pending.items() if now - at >= self.fallback_s]
        for rid in old:
            try:
                self._resolve(Result.from_json(self.b.blobs.get(result_key(rid))))
            except (BlobNotFound, MessageError):
                continue


def _settle(fut: asyncio.Future[Result], result: Result) -> None:
    if not fut.done():  # the waiter may have timed out and gone
        fut.set_result(result)
