"""Delivering webhooks: their own queue, at least once, never in the way of recognition.

A final result for a request with a callback URL becomes a message on the deliveries queue
(the results' final hook sends it, before the request's own message is deleted). This loop, in the
controller's process, takes them `webhook_concurrency` at a time and POSTs each, signed:

- 2xx: delivered. A redirect is not followed; 410 Gone stops the retries; anything else (other
  statuses, a timeout, a refused connection) is retried: the message is hidden for the next
  delay (exponential, with jitter) and comes back; its receive count is the attempt number.
- Retries stop `webhook_retry_for_s` after the result was final; the callback is then `failed`.
- The URL goes through the URL intake's SSRF policy at every attempt (an address the policy
  refuses now is refused, even if it was allowed when the request came): never delivered there.
- Each attempt's outcome is recorded for `GET /v1/recognitions/{id}` (`callback`).

A process that dies mid-attempt loses nothing: the message comes back after its visibility
timeout and is tried again with the same webhook-id.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import httpx

from .. import signing
from ..duty import Duty, SoleDuty
from ..lifecycle.callbacks import Callbacks
from ..logs import about
from ..messages import OUTCOMES, CallbackState, Delivery, MessageError
from ..queues.base import Message, Queue
from ..refusals import InputError
from ..urls import Resolver, UrlPolicy, pinned, system_resolver

log = logging.getLogger(__name__)
FINAL = ("delivered", "failed")


@dataclass(frozen=True)
class DeliveryConfig:
    """What the deliverer takes from the settings (the composition root derives it)."""

    keys: tuple[bytes, ...]  # signing keys (signing.secret_keys): none, no deliveries
    timeout_s: float = 10.0  # one attempt, connection included
    backoff_s: float = 5.0  # the first retry's delay; doubled each time, with jitter
    backoff_max_s: float = 3600.0
    retry_for_s: float = 86_400.0  # retries stop this long after the result was final
    concurrency: int = 16
    url_allow: tuple[str, ...] = ()  # hosts or CIDRs a callback may reach despite being private


class Deliverer:
    def __init__(
        self,
        *,
        deliveries: Queue,
        callbacks: Callbacks,
        config: DeliveryConfig,
        resolver: Resolver = system_resolver,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        duty: Duty | None = None,
    ) -> None:
        """`duty`: delivering is a once-per-deployment duty: only while this process holds it."""
        self.queue, self.callbacks, self.config = deliveries, callbacks, config
        self.duty: Duty = duty or SoleDuty()
        self.keys = list(config.keys)
        self.policy = UrlPolicy(config.url_allow, config.timeout_s, 64 * 1024)
        self.resolver, self.clock, self.jitter = resolver, clock, jitter
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self._published: dict[str, int] = {}

    # -- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        if not self.keys:
            log.info("no webhook_secret: this process delivers no webhooks")
            return
        asyncio.run(self._main(stop))

    async def _main(self, stop: threading.Event) -> None:
        busy: set[asyncio.Task[None]] = set()
        limit = self.config.concurrency
        async with httpx.AsyncClient(timeout=self.config.timeout_s, follow_redirects=False, trust_env=False) as web:
            while not stop.is_set():
                if len(busy) >= limit:
                    await asyncio.wait(busy, return_when=asyncio.FIRST_COMPLETED)
                    continue
                if not await asyncio.to_thread(self.duty.held):  # another process delivers
                    await asyncio.sleep(1.0)
                    continue
                try:
                    msgs = await asyncio.to_thread(self._receive, min(10, limit - len(busy)), 0.2 if busy else 1.0)
                    await asyncio.to_thread(self._publish)
                except Exception:  # storage away for a while: what is in hand comes back later
                    log.warning("webhook deliveries: the queue is unavailable; retrying in 1 s", exc_info=True)
                    await asyncio.sleep(1.0)
                    continue
                for msg in msgs:
                    task = asyncio.create_task(self.deliver(web, msg))
                    busy.add(task)
                    task.add_done_callback(busy.discard)
            if busy:  # unfinished attempts come back after their visibility timeout
                await asyncio.wait(busy, timeout=self.config.timeout_s)
        self._publish()

    def _receive(self, n: int, wait_s: float) -> list[Message]:
        # hidden for an attempt's longest time and then some: a second deliverer must not take it
        return self.queue.receive(n, wait_s=wait_s, visibility_s=math.ceil(self.config.timeout_s) + 5)

    def _publish(self) -> None:
        if self.counts != self._published:
            self.callbacks.publish_stats({"outcomes": self.counts, "at": self.clock(), "pid": os.getpid()})
            self._published = dict(self.counts)

    # -- one attempt ------------------------------------------------------------------------

    async def deliver(self, web: httpx.AsyncClient, msg: Message) -> None:
        try:
            job = Delivery.from_json(msg.body)
        except (MessageError, TypeError):
            log.error("unreadable webhook dropped: %.200s", msg.body)
            await asyncio.to_thread(self.queue.delete, msg.receipt)
            return
        state = await asyncio.to_thread(self.callbacks.state, job.id)
        if state is not None and state.status in FINAL:  # a repeat of one already settled (at-least-once)
            await asyncio.to_thread(self.queue.delete, msg.receipt)
            return
        attempt = msg.receive_count
        error, retry = await self._attempt(web, job)
        now = self.clock()
        wait_s = backoff_s(attempt, self.config.backoff_s, self.config.backoff_max_s, self.jitter())
        # the last failure stays shown once delivered: why it took `attempts`
        last_error = error or (state.last_error if state is not None else None)
        tried = CallbackState(status="failed", attempts=attempt, last_error=last_error, last_attempt_at=now)
        if error is None:
            outcome, record = "delivered", replace(tried, status="delivered", delivered_at=now)
        elif retry and now + wait_s < job.first_at + self.config.retry_for_s:
            outcome, record = "retried", replace(tried, status="pending", next_attempt_at=round(now + wait_s, 3))
        else:
            outcome, record = "failed", tried
        self.counts[outcome] += 1
        await asyncio.to_thread(self._settle, job, msg, record, wait_s if outcome == "retried" else None)
        level = logging.INFO if outcome == "delivered" else logging.WARNING
        log.log(
            level,
            "webhook for %s: %s (attempt %d)%s",
            job.id,
            outcome,
            attempt,
            f": {error}" if error else "",
            extra=about(job),
        )

    def _settle(self, job: Delivery, msg: Message, record: CallbackState, retry_in: float | None) -> None:
        self.callbacks.record(job.id, record)
        if retry_in is None:
            self.queue.delete(msg.receipt)
        else:
            self.queue.change_visibility(msg.receipt, min(max(math.ceil(retry_in), 1), 43_200))

    async def _attempt(self, web: httpx.AsyncClient, job: Delivery) -> tuple[str | None, bool]:
        """(None, _) when delivered; else (why, whether another attempt may succeed)."""
        body = job.payload.encode()
        headers = signing.headers(self.keys, job.id, int(self.clock()), body) | {"User-Agent": "iraas-webhooks/1"}
        if job.trace:
            headers["X-Request-ID"] = job.trace
        if job.traceparent:
            headers["traceparent"] = job.traceparent
        try:
            request = await pinned(web, "POST", job.url, self.policy, self.resolver, headers, body)
        except InputError as err:  # refused by the URL policy, or no such host (for now)
            return f"{err.code}: {err.reason}"[:300], err.code == "unreachable_url"
        try:
            response = await asyncio.wait_for(web.send(request), self.config.timeout_s)
            await response.aclose()
        except TimeoutError:
            return f"no answer in {self.config.timeout_s:g} s", True
        except httpx.HTTPError as exc:
            return f"cannot connect: {exc!r}"[:300], True
        if 200 <= response.status_code < 300:
            return None, True
        return f"HTTP {response.status_code}", response.status_code != 410


def backoff_s(attempt: int, base_s: float, cap_s: float, jitter: float) -> float:
    """The wait after failed attempt number `attempt` (1, 2, …): exponential from `base_s`,
    at most `cap_s`, with "equal jitter" (`jitter` uniform in [0, 1)): half the delay fixed,
    half random, so that receivers that came back are not hit by every retry at once and no
    retry comes sooner than half its step."""
    step: float = min(cap_s, base_s * 2.0 ** min(attempt - 1, 40))
    return step / 2 + step / 2 * jitter
