"""What the web tier's routes share: intake, reply waiting, limits, metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ..access.keys import KeyRing
from ..access.quota import Quotas
from ..blobs.base import BlobError
from ..config import Settings
from ..lifecycle.callbacks import Callbacks
from ..lifecycle.cluster import Cluster
from ..lifecycle.ids import RequestIds
from ..lifecycle.results import Results
from ..messages import Result
from ..queues.base import Depth, Queue, QueueError
from ..refusals import InputError
from ..replies import Replies
from ..signing import secret_keys
from ..urls import Resolver, UrlPolicy, checked_address, display_name, fetch_url, target
from .cluster import ClusterView, read_view
from .intake import Extras, Intake, Item, Submitted, check
from .metrics import Metrics
from .upload import TEXT_FIELDS, Spool, UploadLimits, capped, read_multipart
from .waiting import ReplyWaiter


class Refused(InputError):
    """A request refused whole, with every bad file listed in `errors`."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status, body["error"], body["detail"], body.get("file"))
        self._body = body

    def body(self) -> dict[str, Any]:
        return self._body


log = logging.getLogger(__name__)
MAX_WAIT_S = 600.0  # a longer `timeout` is read as this
MAX_CALLBACK_CHARS = 2048


def location(rid: str) -> str:
    """Where a client asks for one image's status and result."""
    return f"/v1/recognitions/{rid}"


def entry(sub: Submitted, result: Result | None) -> dict[str, Any]:
    """One image in an answer: its result, or where to ask for it later."""
    where = location(sub.id)
    if result is None:
        return {"id": sub.id, "name": sub.name, "status": "queued", "location": where}
    return result.as_dict() | {"location": where}


@dataclass(frozen=True)
class WebParts:
    """What the web tier is given (the composition root builds them)."""

    requests: Queue  # its depth: load shedding, readiness, /v1/cluster
    ids: RequestIds
    results: Results
    replies: Replies  # this process's inbox
    callbacks: Callbacks
    cluster: Cluster
    keys: KeyRing
    quotas: Quotas
    disk: Path | None = None  # the local disk the blob store fills (readiness, 507), if it is one


@dataclass
class WebService:
    settings: Settings
    parts: WebParts
    resolver: Resolver

    def __post_init__(self) -> None:
        s, parts = self.settings, self.parts
        self.requests, self.ids, self.results = parts.requests, parts.ids, parts.results
        self.callbacks, self.cluster = parts.callbacks, parts.cluster
        self.metrics = Metrics()
        # every answer is replied here; what a broken inbox missed is looked up in the store
        self.waiter = ReplyWaiter(parts.replies, self.metrics.observe, self.results.load_result)
        self.intake = Intake(s, self.results, self.waiter.name, self.cluster)
        self.signing = bool(secret_keys(s.webhook_secret))
        self._misconfigured = ""  # the configuration error last logged (once, not per request)
        try:
            self.ids.key()  # reads (or makes) the id-signing key now, not on the event loop
        except PermissionError as exc:  # start anyway: /readyz and intake say what is wrong
            self._log_misconfigured(exc)
        self.url_policy = UrlPolicy(s.url_allow, s.url_timeout_s, s.max_file_bytes)
        self.upload_limits = UploadLimits(
            max_file_bytes=s.max_file_bytes,
            max_files=s.max_files,
            max_request_bytes=s.max_request_bytes,
            spool_bytes=s.spool_bytes,
            read_timeout_s=s.body_timeout_s,
        )
        self.fetches = asyncio.Semaphore(s.max_fetches)
        # what _shed_load last read: (monotonic time, images waiting, free bytes on the data disk)
        self._seen: tuple[float, int, int | None] = (-math.inf, 0, None)

    @property
    def takes_callbacks(self) -> bool:
        """Whether a request may name a callback URL: webhooks are signed and delivered here."""
        return self.signing and self.callbacks.enabled

    def refused(self, what: str, exc: Exception) -> InputError:
        """Storage failed (`what` could not be done). A refused permission is the operator's to
        fix, not the client's: the log names it (once per distinct error); the client learns
        only "misconfigured"."""
        if not isinstance(exc, PermissionError):
            return InputError(503, "store_unavailable", f"{what}: {exc}"[:300], retry_after=5)
        self._log_misconfigured(exc)
        reason = "the service cannot reach its store: a configuration error"
        return InputError(503, "misconfigured", reason, retry_after=60)

    def _log_misconfigured(self, exc: PermissionError) -> None:
        if str(exc) != self._misconfigured:
            log.error("%s", exc)
            self._misconfigured = str(exc)

    async def gather(self, request: Request, fields: tuple[str, ...]) -> tuple[list[Item], Extras]:
        """The request's images (multipart uploads in `fields`, or JSON url/urls fetched
        safely) and what it carries besides. The caller closes their spools (`release`)."""
        s = self.settings
        ctype = request.headers.get("content-type", "")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > s.max_request_bytes:
            raise InputError(413, "request_too_large", f"the request body is over the {s.max_request_bytes} byte limit")
        await self._shed_load()
        if ctype.startswith("application/json"):
            items, values = await self._from_urls(request)
        else:
            uploads, values = await read_multipart(ctype, request.stream(), fields, self.upload_limits)
            items = [Item(u.name, u.body) for u in uploads]
        try:
            return items, await self._extras(request, values)
        except BaseException:
            self.release(items)
            raise

    async def _extras(self, request: Request, values: dict[str, str]) -> Extras:
        """Request id and trace context (from the middleware), a deadline and a callback URL (a
        form or JSON field, or a query parameter), each checked now: a callback URL that the
        URL policy refuses is refused with the request, before anything is queued."""
        state = request.scope.get("state", {})
        raw = {k: values.get(k) or request.query_params.get(k, "") for k in TEXT_FIELDS}
        deadline = _deadline(raw["deadline_s"], self.settings.result_ttl_s) if raw["deadline_s"] else 0.0
        callback = await self._callback(raw["callback_url"]) if raw["callback_url"] else ""
        return Extras(state.get("request_id", ""), state.get("traceparent", ""), deadline, callback)

    async def _callback(self, url: str) -> str:
        if not self.takes_callbacks:
            detail = "this service delivers no webhooks: its operator has set no --webhook-secret"
            raise InputError(400, "webhooks_off", detail)
        if len(url) > MAX_CALLBACK_CHARS:
            raise InputError(400, "bad_url", f"a callback URL is at most {MAX_CALLBACK_CHARS} characters")
        _, host, port, _ = target(url)
        await checked_address(host, port, self.url_policy, self.resolver)
        return url

    def _load(self) -> tuple[Depth, int | None]:
        """Queue depth, and free bytes on a local blob store's disk (None for a server's)."""
        depth = self.requests.depth()
        disk = self.parts.disk
        return depth, shutil.disk_usage(disk).free if disk is not None and disk.exists() else None

    def probe(self) -> Depth:
        """Readiness: the queue and the store answer, a blob can be written, the disk has room."""
        depth, free = self._load()
        if free is not None and free < self.settings.min_free_bytes:
            raise OSError(f"only {free} bytes free on the data disk (min_free_bytes {self.settings.min_free_bytes})")
        self.results.probe()
        return depth

    def status(self, rid: str, owners: list[str]) -> dict[str, Any] | None:
        """`rid`'s result and its webhook's delivery, or where it is; None if never issued for
        one of `owners` (blocking I/O: call from a thread)."""
        running = set(self.cluster.status().running)
        return self.results.status(rid, self.settings.result_ttl_s, owners, running, also=self._callback_shown)

    def view(self, webhooks: bool) -> ClusterView:
        """The cluster as /v1/cluster and /metrics show it (blocking I/O: call from a thread)."""
        return read_view(self.requests, self.cluster, self.callbacks, webhooks=webhooks)

    def _callback_shown(self, rid: str) -> dict[str, Any]:
        state = self.callbacks.state(rid)
        return {"callback": state.shown()} if state is not None else {}

    @staticmethod
    def release(items: list[Item]) -> None:
        for item in items:
            item.body.close()

    async def _shed_load(self) -> None:
        """Past `max_backlog` images waiting, new work is refused (503 and Retry-After) instead
        of growing the queue without bound. The depth is read at most twice a second."""
        limit = self.settings.max_backlog
        read_at, backlog, free = self._seen
        if time.monotonic() - read_at > 0.5:
            try:
                depth, free = await run_in_threadpool(self._load)
            except (QueueError, BlobError, OSError) as exc:
                raise self.refused("cannot read the queue", exc) from None
            backlog = depth.visible + depth.delayed
            self._seen = (time.monotonic(), backlog, free)
        if free is not None and free < self.settings.min_free_bytes:
            raise InputError(507, "disk_full", "the service's disk is full: try again later", retry_after=60)
        if limit and backlog >= limit:
            raise InputError(
                503, "overloaded", f"{backlog} images are waiting (limit {limit}): try again later", retry_after=10
            )

    async def _from_urls(self, request: Request) -> tuple[list[Item], dict[str, str]]:
        s = self.settings
        raw = bytearray()
        async for chunk in capped(request.stream(), s.max_json_bytes, s.body_timeout_s):
            raw += chunk
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise InputError(400, "bad_json", "the body is not valid JSON") from None
        urls = body.get("urls") if isinstance(body, dict) else None
        if isinstance(body, dict) and "url" in body:
            urls = [body["url"]]
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise InputError(400, "missing_field", 'send {"url": "..."} or {"urls": ["...", ...]}')
        if len(urls) > s.max_files:
            raise InputError(413, "too_many_files", f"at most {s.max_files} URLs per request")
        values = {k: str(body[k]) for k in TEXT_FIELDS if body.get(k) is not None}
        datas = await asyncio.gather(*(self._fetch(u) for u in urls))
        items = [Item(display_name(u), Spool.of(d, s.spool_bytes)) for u, d in zip(urls, datas, strict=True)]
        return items, values

    async def _fetch(self, url: str) -> bytes:
        """One URL, within the total deadline, with at most `max_fetches` in flight."""
        async with self.fetches:
            return await fetch_url(url, self.url_policy, self.resolver)

    def check_all(self, items: list[Item]) -> None:
        """Refuse the whole request, naming every bad file, before anything is stored."""
        errors = []
        for item in items:
            try:
                check(item, self.settings)
            except InputError as err:
                errors.append(err)
        if errors:
            body = errors[0].body() | {"errors": [e.body() for e in errors]}
            raise Refused(errors[0].status, body)

    def _check_and_submit(
        self, items: list[Item], ids: list[str], task: str, person: str, extras: Extras
    ) -> list[Submitted]:
        self.check_all(items)  # one trip to the thread pool for both: each trip costs
        try:
            subs = self.intake.submit(items, ids, task, person, extras)
            log.info("%d image(s) queued as %s", len(ids), " ".join(ids[:10]) + (" …" if len(ids) > 10 else ""))
            return subs
        except (QueueError, BlobError, OSError) as exc:
            # Locked, full or unreachable storage: nothing was answered to the client yet, so the
            # ids issued here are never seen (a GET of an id it never received cannot happen).
            raise self.refused("cannot store the request now", exc) from None

    async def submit_and_wait(
        self,
        items: list[Item],
        wait: bool,
        timeout: float,
        *,
        owner: str,
        task: str = "recognize",
        person: str = "",
        extras: Extras = Extras(),  # noqa: B008 (frozen: shared safely)
    ) -> list[dict[str, Any]]:
        """Queue `items` for the workers (`task` "enroll": faces, add them as `person`) and
        wait up to `timeout` for the answers; unanswered ones say where to look later. Only
        `owner` (or an admin) may read their status later."""
        ids = self.ids.new_ids(len(items), owner)
        futures = {rid: self.waiter.expect(rid) for rid in ids} if wait else {}
        try:
            subs = await run_in_threadpool(self._check_and_submit, items, ids, task, person, extras)
        except BaseException:
            for rid in ids:
                self.waiter.forget(rid)
            raise
        finally:
            self.release(items)
        for sub in subs:
            if sub.cached is not None:
                if sub.cached.cached:  # (not an early `expired`)
                    self.metrics.dedup.inc()
                self.metrics.observe(sub.cached)
                self.waiter.forget(sub.id)
        if not wait:
            return [entry(s, s.cached) for s in subs]  # answered at once: the answer
        pending = [futures[s.id] for s in subs if s.cached is None]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        return [self._answer(sub, futures[sub.id]) for sub in subs]

    def _answer(self, sub: Submitted, fut: asyncio.Future[Result]) -> dict[str, Any]:
        result = sub.cached or (fut.result() if fut.done() else None)
        if result is None:
            self.waiter.forget(sub.id)
        return entry(sub, result)

    def timeout(self, request: Request) -> float:
        raw = request.query_params.get("timeout", str(self.settings.timeout_s))
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise InputError(400, "bad_parameter", f"timeout must be a number of seconds, got {raw[:40]!r}")
        return min(value, MAX_WAIT_S)

    @staticmethod
    def wait(request: Request) -> bool:
        raw = request.query_params.get("wait", "true").lower()
        if raw not in ("true", "1", "yes", "false", "0", "no"):
            raise InputError(400, "bad_parameter", f"wait must be true or false, got {raw[:40]!r}")
        return raw in ("true", "1", "yes")


def _deadline(raw: str, most_s: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 < value <= most_s:
        raise InputError(400, "bad_parameter", f"deadline_s must be seconds in (0, {most_s:g}], got {raw[:40]!r}")
    return value
