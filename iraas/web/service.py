"""What the web tier's routes share: intake, reply waiting, limits, metrics."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ..config import Settings
from ..messages import Result
from ..store import Store
from .errors import InputError
from .fetch import Resolver, UrlPolicy, fetch_url
from .intake import Intake, Item, Submitted, check
from .metrics import Metrics
from .replies import ReplyWaiter
from .upload import read_multipart


class Refused(InputError):
    """A request refused whole, with every bad file listed in `errors`."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status, body["error"], body["detail"], body.get("file"))
        self._body = body

    def body(self) -> dict[str, Any]:
        return self._body


def location(rid: str) -> str:
    """Where a client asks for one image's status and result."""
    return f"/v1/recognitions/{rid}"


def entry(sub: Submitted, result: Result | None) -> dict[str, Any]:
    """One image in an answer: its result, or where to ask for it later."""
    where = location(sub.id)
    if result is None:
        return {"id": sub.id, "name": sub.name, "status": "queued", "location": where}
    return result.as_dict() | {"location": where}


@dataclass
class WebService:
    settings: Settings
    store: Store
    resolver: Resolver

    def __post_init__(self) -> None:
        s = self.settings
        self.waiter = ReplyWaiter(self.store)
        self.intake = Intake(s, self.store, self.waiter.name)
        self.store.new_ids(1)  # reads (or makes) the id-signing key now, not on the event loop
        self.metrics = Metrics()
        self.url_policy = UrlPolicy(s.url_allow, s.url_timeout_s, s.max_file_bytes)

    async def gather(self, request: Request, fields: tuple[str, ...]) -> list[Item]:
        """The request's images: multipart uploads in `fields`, or JSON url/urls fetched safely."""
        s = self.settings
        ctype = request.headers.get("content-type", "")
        declared = request.headers.get("content-length", "")
        limit = s.max_file_bytes * s.max_files + 1024 * 1024
        if declared.isdigit() and int(declared) > limit:
            raise InputError(413, "too_large", f"request body is over the {limit} byte limit")
        if ctype.startswith("application/json"):
            return await self._from_urls(request)
        uploads = await read_multipart(ctype, request.stream(), fields, s.max_file_bytes, s.max_files)
        return [Item(u.name, bytes(u.data)) for u in uploads]

    async def _from_urls(self, request: Request) -> list[Item]:
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise InputError(400, "bad_json", "the body is not valid JSON") from None
        urls = body.get("urls") if isinstance(body, dict) else None
        if isinstance(body, dict) and "url" in body:
            urls = [body["url"]]
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise InputError(400, "missing_field", 'send {"url": "..."} or {"urls": ["...", ...]}')
        if len(urls) > self.settings.max_files:
            raise InputError(413, "too_many_files", f"at most {self.settings.max_files} URLs per request")
        datas = await asyncio.gather(*(fetch_url(u, self.url_policy, self.resolver) for u in urls))
        return [Item(u, d) for u, d in zip(urls, datas, strict=True)]

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
        self, items: list[Item], ids: list[str], reply: bool, task: str, person: str
    ) -> list[Submitted]:
        self.check_all(items)  # one trip to the thread pool for both: each trip costs
        return self.intake.submit(items, ids, reply, task, person)

    async def submit_and_wait(
        self, items: list[Item], wait: bool, timeout: float, task: str = "recognize", person: str = ""
    ) -> list[dict[str, Any]]:
        """Queue `items` for the workers (`task` "enroll": faces, add them as `person`) and
        wait up to `timeout` for the answers; unanswered ones say where to look later."""
        ids = self.store.new_ids(len(items))
        futures = {rid: self.waiter.expect(rid) for rid in ids} if wait else {}
        try:
            subs = await run_in_threadpool(self._check_and_submit, items, ids, wait, task, person)
        except BaseException:
            for rid in ids:
                self.waiter.forget(rid)
            raise
        for sub in subs:
            if sub.cached is not None:
                self.metrics.dedup.inc()
                self.waiter.forget(sub.id)
        if not wait:
            return [entry(s, None) for s in subs]
        pending = [futures[s.id] for s in subs if s.cached is None]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        return [self._answer(sub, futures[sub.id]) for sub in subs]

    def _answer(self, sub: Submitted, fut: asyncio.Future[Result]) -> dict[str, Any]:
        result = sub.cached or (fut.result() if fut.done() else None)
        if result is None:
            self.waiter.forget(sub.id)
        else:
            self.observe(result)
        return entry(sub, result)

    def observe(self, result: Result) -> None:
        m = self.metrics
        m.images.labels(result.status).inc()
        if "total" in result.timings:
            m.latency.observe(result.timings["total"])
        if not result.cached and "inference" in result.timings:
            m.inference.observe(result.timings["inference"])
            m.batch.observe(result.timings.get("batch", 1))

    def timeout(self, request: Request) -> float:
        raw = request.query_params.get("timeout", str(self.settings.timeout_s))
        try:
            value = float(raw)
        except ValueError:
            raise InputError(400, "bad_parameter", f"timeout must be a number of seconds, got {raw!r}") from None
        return min(max(value, 0.0), 600.0)
