"""Webhook records: a final result's delivery queued, and its state as it goes.

    callbacks/<id>.json    a webhook's delivery: status, attempts, last error (CallbackState)
    cluster/webhooks.json  the delivering process's counts by outcome, for /metrics

`on_final` is the results' hook: a request that named a callback URL gets its Delivery queued
on the webhooks' own queue when its result becomes final, before the request's message is
deleted. A redelivery whose result already stood queues it again unless its record exists (the
worker before may have died in between): at least once, with the same webhook id.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from ..blobs.base import BlobNotFound, BlobStore
from ..messages import CallbackState, Delivery, MessageError, Request, Result
from ..queues.base import Queue

log = logging.getLogger(__name__)
CALLBACKS = "callbacks/"  # a delivery record per request with a webhook
_STATS = "cluster/webhooks.json"


def webhook_payload(result: Result, at: float) -> str:
    """The body POSTed to a callback URL (the OpenAPI document's `webhooks`: `Webhook`)."""
    kind = "recognition.done" if result.status == "done" else "recognition.failed"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
    return json.dumps({"type": kind, "timestamp": stamp, "data": result.as_dict()}, separators=(",", ":"))


class Callbacks:
    def __init__(self, *, deliveries: Queue | None, blobs: BlobStore, clock: Callable[[], float] = time.time) -> None:
        """`deliveries`: the webhooks' own queue (None: this deployment delivers none)."""
        self.deliveries, self.blobs, self.clock = deliveries, blobs, clock

    @property
    def enabled(self) -> bool:
        return self.deliveries is not None

    def on_final(self, req: Request, result: Result, made_final: bool) -> None:
        if not req.callback:
            return
        # Its record is written after the send, so a crash between the two queues it twice: at
        # least once, with the same webhook-id, which receivers use to drop repeats.
        if made_final or self.state(req.id) is None:
            self.schedule(req, result)

    def schedule(self, req: Request, result: Result) -> None:
        if self.deliveries is None:
            log.error("request %s named a callback, but this deployment delivers no webhooks", req.id)
            return
        now = self.clock()
        payload = webhook_payload(result, now)
        job = Delivery(
            id=req.id, url=req.callback, payload=payload, first_at=now, trace=req.trace, traceparent=req.traceparent
        )
        self.deliveries.send(job.to_json())
        pending = CallbackState(status="pending").to_json().encode()
        self.blobs.put(f"{CALLBACKS}{req.id}.json", pending, if_absent=True, durable=False)

    def state(self, rid: str) -> CallbackState | None:
        """A webhook's delivery so far, None before any."""
        try:
            return CallbackState.from_json(self.blobs.get(f"{CALLBACKS}{rid}.json"))
        except (BlobNotFound, MessageError, TypeError):
            return None

    def record(self, rid: str, state: CallbackState) -> None:
        self.blobs.put(f"{CALLBACKS}{rid}.json", state.to_json().encode(), durable=False)

    def publish_stats(self, stats: dict[str, Any]) -> None:
        self.blobs.put(_STATS, json.dumps(stats).encode(), durable=False)

    def stats(self) -> dict[str, Any]:
        """The delivering process's counts by outcome, and the deliveries waiting (backlog)."""
        try:
            stats: dict[str, Any] = json.loads(self.blobs.get(_STATS))
        except (BlobNotFound, ValueError):
            stats = {}
        if self.deliveries is not None:
            waiting = self.deliveries.depth()
            stats["backlog"] = waiting.visible + waiting.in_flight + waiting.delayed
        return stats

    def expire(self, ttl_s: float) -> int:
        return self.blobs.expire(CALLBACKS, self.clock() - ttl_s)
