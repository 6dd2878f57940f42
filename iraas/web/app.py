"""The web tier: HTTP API, course-compatible endpoint, metrics, cluster view and browser UI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from .. import heartbeat
from ..backends import Backends
from ..blobs.base import BlobNotFound
from ..config import Settings
from ..controller import STATUS_KEY
from ..messages import MessageError, Result, request_key, result_key
from ..messages import Request as QueuedRequest
from .errors import InputError
from .fetch import Resolver, UrlPolicy, fetch_url, system_resolver
from .intake import Intake, Item, Submitted, check
from .metrics import Metrics
from .replies import ReplyWaiter
from .upload import read_multipart

log = logging.getLogger(__name__)
_ID = re.compile(r"^[0-9a-f]{32}$")
_UI = Path(__file__).with_name("static") / "index.html"
COURSE_FIELDS = ("inputFile", "myfile")


def create_app(
    settings: Settings,
    backends: Backends,
    resolver: Resolver = system_resolver,
    background: Callable[[threading.Event], None] | None = None,
) -> FastAPI:
    """`background(stop)` runs in a thread for the app's lifetime (the controller, in `iraas up`)."""
    waiter = ReplyWaiter(backends)
    intake = Intake(settings, backends, waiter.name)
    metrics = Metrics()
    url_policy = UrlPolicy(settings.url_allow, settings.url_timeout_s, settings.max_file_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        waiter.start(asyncio.get_running_loop())
        stop = threading.Event()
        thread = threading.Thread(target=background, args=(stop,), daemon=True) if background else None
        if thread:
            thread.start()
        yield
        stop.set()
        if thread:
            thread.join(timeout=10)
        waiter.stop()

    app = FastAPI(
        title="iraas",
        version="0.1.0",
        lifespan=lifespan,
        description="Image Recognition as a Service: classify images on an elastic worker pool.",
    )

    @app.exception_handler(InputError)
    async def _input_error(_: Request, exc: InputError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    app.add_middleware(_CountRequests, metrics=metrics)

    async def gather(request: Request, fields: tuple[str, ...]) -> list[Item]:
        ctype = request.headers.get("content-type", "")
        declared = request.headers.get("content-length", "")
        limit = settings.max_file_bytes * settings.max_files + 1024 * 1024
        if declared.isdigit() and int(declared) > limit:
            raise InputError(413, "too_large", f"request body is over the {limit} byte limit")
        if ctype.startswith("application/json"):
            return await _from_urls(request)
        uploads = await read_multipart(ctype, request.stream(), fields, settings.max_file_bytes, settings.max_files)
        return [Item(u.name, bytes(u.data)) for u in uploads]

    async def _from_urls(request: Request) -> list[Item]:
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise InputError(400, "bad_json", "the body is not valid JSON") from None
        urls = body.get("urls") if isinstance(body, dict) else None
        if isinstance(body, dict) and "url" in body:
            urls = [body["url"]]
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise InputError(400, "missing_field", 'send {"url": "..."} or {"urls": ["...", ...]}')
        if len(urls) > settings.max_files:
            raise InputError(413, "too_many_files", f"at most {settings.max_files} URLs per request")
        datas = await asyncio.gather(*(fetch_url(u, url_policy, resolver) for u in urls))
        return [Item(u, d) for u, d in zip(urls, datas, strict=True)]

    def check_all(items: list[Item]) -> None:
        """Refuse the whole request, naming every bad file, before anything is stored."""
        errors = []
        for item in items:
            try:
                check(item, settings)
            except InputError as err:
                errors.append(err)
        if errors:
            body = errors[0].body() | {"errors": [e.body() for e in errors]}
            raise _Refused(errors[0].status, body)

    def check_and_submit(items: list[Item], ids: list[str], reply: bool) -> list[Submitted]:
        check_all(items)  # one trip to the thread pool for both: each trip costs
        return intake.submit(items, ids, reply)

    async def submit_and_wait(items: list[Item], wait: bool, timeout: float) -> list[dict[str, Any]]:
        ids = intake.new_ids(len(items))
        futures = {rid: waiter.expect(rid) for rid in ids} if wait else {}
        try:
            subs = await run_in_threadpool(check_and_submit, items, ids, wait)
        except BaseException:
            for rid in ids:
                waiter.forget(rid)
            raise
        for sub in subs:
            if sub.cached is not None:
                metrics.dedup.inc()
                waiter.forget(sub.id)
        if not wait:
            return [_entry(s, None) for s in subs]
        pending = [futures[s.id] for s in subs if s.cached is None]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        out = []
        for sub in subs:
            fut = futures[sub.id]
            result = sub.cached or (fut.result() if fut.done() else None)
            if result is None:
                waiter.forget(sub.id)
            else:
                observe(result)
            out.append(_entry(sub, result))
        return out

    def observe(result: Result) -> None:
        metrics.images.labels(result.status).inc()
        if "total" in result.timings:
            metrics.latency.observe(result.timings["total"])
        if not result.cached and "inference" in result.timings:
            metrics.inference.observe(result.timings["inference"])
            metrics.batch.observe(result.timings.get("batch", 1))

    def _timeout(request: Request) -> float:
        raw = request.query_params.get("timeout", str(settings.timeout_s))
        try:
            value = float(raw)
        except ValueError:
            raise InputError(400, "bad_parameter", f"timeout must be a number of seconds, got {raw!r}") from None
        return min(max(value, 0.0), 600.0)

    @app.post("/v1/recognitions", summary="Classify one or more images (multipart `files`, or JSON url/urls)")
    async def recognitions(request: Request) -> Response:
        wait = request.query_params.get("wait", "true").lower() not in ("false", "0", "no")
        timeout = _timeout(request)
        items = await gather(request, ("files",))
        entries = await submit_and_wait(items, wait, timeout)
        if not wait:
            headers = {"Location": entries[0]["location"]} if len(entries) == 1 else {}
            return JSONResponse(entries, status_code=202, headers=headers)
        return JSONResponse(entries)

    @app.get("/v1/recognitions/{rid}", summary="Status and result of one image")
    async def recognition(rid: str) -> JSONResponse:
        if not _ID.match(rid):
            raise InputError(400, "bad_id", "an id is 32 lowercase hex digits")
        return JSONResponse(await run_in_threadpool(_status, backends, rid))

    @app.post(
        "/",
        summary="Course-compatible: multipart `inputFile` or `myfile`; answers name:label",
        response_class=PlainTextResponse,
    )
    async def course(request: Request) -> Response:
        items = (await gather(request, COURSE_FIELDS))[:1]
        (entry,) = await submit_and_wait(items, True, _timeout(request))
        stem = Path(entry["name"]).stem
        if entry["status"] == "done":
            return PlainTextResponse(f"{stem}:{entry['label']}")
        if entry["status"] == "failed":
            return JSONResponse(
                {"error": entry.get("error"), "detail": entry.get("reason"), "file": entry["name"]}, status_code=422
            )
        return JSONResponse({"error": "timeout", "detail": "no answer in time", "id": entry["id"]}, status_code=504)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def ui() -> HTMLResponse:
        return HTMLResponse(_UI.read_text())

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        try:
            depth = await run_in_threadpool(backends.requests.depth)
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "detail": str(exc)}, status_code=503)
        return JSONResponse({"status": "ready", "queue": depth.__dict__})

    @app.get("/v1/cluster", summary="Queue depth, workers and recent scaling decisions")
    async def cluster() -> JSONResponse:
        return JSONResponse(await run_in_threadpool(_cluster, backends))

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        info = await run_in_threadpool(_cluster, backends)
        for state in ("visible", "in_flight", "delayed"):
            metrics.queue.labels(state).set(info["queue"].get(state, 0))
        counts: dict[str, int] = {"idle": 0, "busy": 0, "starting": 0, "stopping": 0}
        for w in info["workers"]:
            counts[w["state"]] = counts.get(w["state"], 0) + 1
        for state, n in counts.items():
            metrics.workers.labels(state).set(n)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if settings.model == "faces":
        _gallery_routes(app, backends, settings, check_all, gather)
    return app


def _gallery_routes(app: FastAPI, backends: Backends, settings: Settings, check_all: Any, gather: Any) -> None:
    """Model "faces": the people a running service knows, and adding photos of someone."""
    from ..messages import GALLERY_KEY
    from ..model.recognizer import publish_gallery

    lock = threading.Lock()  # one enrolment at a time in this process: OpenCV nets are not thread-safe
    embedder: list[Any] = []

    def current() -> Any:
        from ..model.faces import Gallery

        try:
            return Gallery.from_bytes(backends.blobs.get(GALLERY_KEY))
        except BlobNotFound:
            return Gallery()

    def enrol(name: str, items: list[Item]) -> dict[str, Any]:
        import numpy as np

        from ..imaging import decode
        from ..model.faces import FaceEmbedder

        check_all(items)
        with lock:
            if not embedder:
                embedder.append(FaceEmbedder())
            emb = embedder[0]
            gallery, problems = current(), []
            for item in items:
                rgb = np.asarray(decode(item.data, min_side=128, max_pixels=settings.max_pixels))
                faces = emb.detect(rgb)
                if len(faces) != 1:
                    problems.append(f"{item.name}: {'no face' if not faces else f'{len(faces)} faces'}")
                (vec,) = emb.embed([emb.align(rgb, faces[0] if faces else None)])
                gallery.add(name, vec, f"{name}/{item.name}")
            publish_gallery(backends.blobs, gallery.to_bytes())
        return {"person": name, "added": len(items), "images": gallery.people().get(name, 0), "problems": problems}

    @app.get("/v1/gallery", summary="People enrolled, with their number of photos")
    async def people() -> JSONResponse:
        gallery = await run_in_threadpool(current)
        return JSONResponse({"people": gallery.people(), "images": len(gallery.names)})

    @app.post("/v1/gallery/{name}", summary="Add photos (multipart `files`) of a person")
    async def add(name: str, request: Request) -> JSONResponse:
        if not re.fullmatch(r"[\w .'-]{1,64}", name):
            raise InputError(400, "bad_name", "a name is 1-64 letters, digits, spaces, . ' - or _")
        items = await gather(request, ("files",))
        return JSONResponse(await run_in_threadpool(enrol, name, items))


class _CountRequests:
    """Requests by route and status, as plain ASGI: BaseHTTPMiddleware costs ~1 ms a request."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            self.metrics.requests.labels(getattr(route, "path", "other"), str(status["code"])).inc()


class _Refused(InputError):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status, body["error"], body["detail"], body.get("file"))
        self._body = body

    def body(self) -> dict[str, Any]:
        return self._body


def _entry(sub: Submitted, result: Result | None) -> dict[str, Any]:
    location = f"/v1/recognitions/{sub.id}"
    if result is None:
        return {"id": sub.id, "name": sub.name, "status": "queued", "location": location}
    body: dict[str, Any] = json.loads(result.to_json())
    body.pop("v", None)
    return body | {"location": location}


def _status(backends: Backends, rid: str) -> dict[str, Any]:
    try:
        return _entry(Submitted(rid, "", None), Result.from_json(backends.blobs.get(result_key(rid))))
    except (BlobNotFound, MessageError):
        pass
    try:
        req = QueuedRequest.from_json(backends.blobs.get(request_key(rid)))
    except (BlobNotFound, MessageError):
        raise InputError(404, "not_found", f"no recognition with id {rid}") from None
    running = any(rid in beat.current for beat in heartbeat.read_all(backends.blobs).values())
    return {
        "id": rid,
        "name": req.name,
        "status": "running" if running else "queued",
        "location": f"/v1/recognitions/{rid}",
    }


def _cluster(backends: Backends) -> dict[str, Any]:
    depth = backends.requests.depth()
    try:
        status = json.loads(backends.blobs.get(STATUS_KEY))
    except BlobNotFound:
        status = {"workers": [], "decisions": [], "policy": None, "at": None}
    status["queue"] = {
        "visible": depth.visible,
        "in_flight": depth.in_flight,
        "delayed": depth.delayed,
        **{k: v for k, v in status.get("queue", {}).items() if k == "dead_lettered"},
    }
    return status  # type: ignore[no-any-return]
