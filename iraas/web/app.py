"""The web tier: HTTP API, course-compatible endpoint, metrics, cluster view and browser UI."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .. import logs
from ..access.keys import KeyRingError
from ..blobs.base import BlobError
from ..config import Settings
from ..queues.base import QueueError
from ..refusals import InputError
from ..urls import Resolver, system_resolver
from .asgi import HttpMiddleware, Send, on_start
from .auth import Access, Caller
from .gate import Gate, allowed_hosts
from .metrics import Metrics
from .service import WebParts, WebService, location

log = logging.getLogger(__name__)
_ID = re.compile(r"[0-9a-f]{32}")
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
# W3C trace context, version 00: trace id and parent id not all zeros (checked loosely: logged only)
_TRACEPARENT = re.compile(rb"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large", 415: "bad_content_type"}
_STATIC = Path(__file__).with_name("static")
_ASSETS = {"app.js": "text/javascript", "app.css": "text/css"}
COURSE_FIELDS = ("inputFile", "myfile")


Mount = Callable[[FastAPI, WebService, Access], None]


def create_app(
    settings: Settings,
    parts: WebParts,
    resolver: Resolver = system_resolver,
    background: Callable[[threading.Event], None] | None = None,
    mounts: Sequence[Mount] = (),
) -> FastAPI:
    """`background(stop)` runs in a thread for the app's lifetime (the controller, in `iraas up`);
    `mounts` add the routes of what is served besides recognition (the faces gallery)."""
    svc = WebService(settings, parts, resolver)
    access = Access(settings, parts.keys, parts.quotas)
    app = FastAPI(
        title="iraas",
        version="0.1.0",
        lifespan=_lifespan(svc, background),
        description="Image Recognition as a Service: classify images on an elastic worker pool.",
    )

    _error_handlers(app, svc)
    app.add_middleware(
        Gate, hosts=allowed_hosts(settings.host, settings.allowed_hosts), origins=frozenset(settings.allowed_origins)
    )
    app.add_middleware(_Observe, metrics=svc.metrics)
    _recognition_routes(app, svc, access)
    _course_routes(app, svc, access)
    _page_routes(app)
    _operations_routes(app, svc, access)
    _key_routes(app, access)
    for mount in mounts:
        mount(app, svc, access)
    return app


def _lifespan(
    svc: WebService, background: Callable[[threading.Event], None] | None
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        svc.waiter.start(asyncio.get_running_loop())
        stop = threading.Event()
        thread = threading.Thread(target=background, args=(stop,), daemon=True) if background else None
        if thread:
            thread.start()
        yield
        stop.set()
        if thread:
            thread.join(timeout=10)
        svc.waiter.stop()

    return lifespan


def request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def _error_handlers(app: FastAPI, svc: WebService) -> None:
    """Every error is JSON with a stable code and the request id, whatever raised it."""

    def body(request: Request, error: dict[str, Any]) -> dict[str, Any]:
        return error | {"request_id": request_id(request)}

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse(body(request, exc.body()), status_code=exc.status, headers=exc.headers)

    async def _store_error(request: Request, exc: Exception) -> JSONResponse:
        # The store away a moment (a database restart) wherever a route met it: 503, try again.
        refusal = svc.refused("the store did not answer", exc)
        return JSONResponse(body(request, refusal.body()), status_code=503, headers=refusal.headers)

    app.add_exception_handler(QueueError, _store_error)
    app.add_exception_handler(BlobError, _store_error)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = _CODES.get(exc.status_code, f"http_{exc.status_code}")
        return JSONResponse(
            body(request, {"error": code, "detail": str(exc.detail)}), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("request %s failed", request_id(request), exc_info=exc)
        detail = "an internal error; the service log has the details under this request id"
        return JSONResponse(body(request, {"error": "internal", "detail": detail}), status_code=500)


def _recognition_routes(app: FastAPI, svc: WebService, access: Access) -> None:
    @app.post("/v1/recognitions", summary="Classify one or more images (multipart `files`, or JSON url/urls)")
    async def recognitions(request: Request, caller: Caller = Depends(access.recognize)) -> Response:
        wait = svc.wait(request)
        timeout = svc.timeout(request)
        items, extras = await svc.gather(request, ("files",))
        items = await access.charge(request, caller, items)
        entries = await svc.submit_and_wait(items, wait, timeout, owner=caller.owner, extras=extras)
        if not wait:
            headers = {"Location": entries[0]["location"]} if len(entries) == 1 else {}
            return JSONResponse(entries, status_code=202, headers=headers)
        return JSONResponse(entries)

    @app.get("/v1/recognitions/{rid}", summary="Status and result of one image (the key that sent it, or admin)")
    async def recognition(rid: str, caller: Caller = Depends(access.recognize)) -> JSONResponse:
        if not _ID.fullmatch(rid):
            raise InputError(400, "bad_id", "an id is 32 lowercase hex digits")
        owners = await run_in_threadpool(access.owners, caller)
        status = await run_in_threadpool(svc.status, rid, owners)
        if status is None:
            raise InputError(404, "not_found", f"no recognition with id {rid}")
        return JSONResponse(status | {"location": location(rid)})


def _course_routes(app: FastAPI, svc: WebService, access: Access) -> None:
    """The course contract: one image, answered in plain text, at each `course_paths`."""
    plain = svc.settings.course_reply == "label"

    async def course(request: Request, caller: Caller = Depends(access.course)) -> Response:
        timeout = svc.timeout(request)
        items, extras = await svc.gather(request, COURSE_FIELDS)
        svc.release(items[1:])
        items = await access.charge(request, caller, items[:1])
        (got,) = await svc.submit_and_wait(items, True, timeout, owner=caller.owner, extras=extras)
        if got["status"] == "done":
            label = str(got["label"])
            return PlainTextResponse(label if plain else f"{Path(got['name']).stem}:{label}")
        if got["status"] == "failed":
            body = {"error": got.get("error"), "detail": got.get("reason"), "file": got["name"]}
            return JSONResponse(body, status_code=422)
        return JSONResponse({"error": "timeout", "detail": "no answer in time", "id": got["id"]}, status_code=504)

    answer = "the label" if plain else "name:label"
    for path in svc.settings.course_paths:  # wherever the deployment's course clients POST
        app.add_api_route(
            path,
            course,
            methods=["POST"],
            summary=f"Course-compatible: multipart `inputFile` or `myfile`; answers {answer} in plain text",
            response_class=PlainTextResponse,
        )


def _page_routes(app: FastAPI) -> None:
    """The browser page and its two files."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def ui() -> FileResponse:
        return FileResponse(_STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        if name not in _ASSETS:
            raise InputError(404, "not_found", f"no file {name[:60]!r}")
        return FileResponse(_STATIC / name, media_type=_ASSETS[name])


def _operations_routes(app: FastAPI, svc: WebService, access: Access) -> None:
    @app.get("/v1/me", summary="The key this request was made with: its name and scope")
    async def me(caller: Caller = Depends(access.recognize)) -> JSONResponse:
        return JSONResponse(access.whoami(caller))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready when the queue and the store can be written and the disk has room; answers
        within a second either way (a stuck store is "not ready", not a hung probe)."""
        try:
            depth = await asyncio.wait_for(run_in_threadpool(svc.probe), 1.0)
        except TimeoutError:
            return JSONResponse({"status": "unavailable", "detail": "the store did not answer in 1 s"}, 503)
        except PermissionError as exc:  # what the operator must fix, said plainly
            return JSONResponse({"status": "misconfigured", "detail": str(exc)[:400]}, status_code=503)
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "detail": str(exc)[:300]}, status_code=503)
        return JSONResponse({"status": "ready", "queue": depth.__dict__})

    @app.get("/v1/cluster", summary="Queue depth and workers; for admin keys, also decisions and errors")
    async def cluster(caller: Caller = Depends(access.recognize)) -> JSONResponse:
        admin = caller.scope == "admin"
        view = await run_in_threadpool(svc.view, admin)
        return JSONResponse(view.answer(admin))

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(access.metrics)])
    async def prometheus() -> Response:
        view = await run_in_threadpool(svc.view, True)
        svc.metrics.scraped(view)
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _key_routes(app: FastAPI, access: Access) -> None:
    """Key management for admin keys, the same verbs as `iraas keys`: a key is shown once."""
    ring, admin = access.ring, [Depends(access.admin)]

    def refused(exc: KeyRingError) -> InputError:
        return InputError(exc.status, exc.code, str(exc))

    @app.get("/v1/keys", summary="Every key: name, scope, limits, created, revoked (never the key)", dependencies=admin)
    async def keys() -> JSONResponse:
        return JSONResponse([dataclasses.asdict(k) for k in await run_in_threadpool(ring.all)])

    @app.post(
        "/v1/keys", summary='Create a key: JSON {"name", "scope", limits}; the answer shows it once', dependencies=admin
    )
    async def create(request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body())
            name, scope = str(body["name"]), str(body.get("scope", "recognize"))
            fields = {k: body[k] for k in ("requests_per_s", "images_per_s", "images_per_day") if k in body}
        except (ValueError, KeyError, TypeError):
            raise InputError(400, "bad_json", 'send {"name": ..., "scope": "recognize" | "admin"}') from None
        try:
            token = await run_in_threadpool(ring.create, name, scope, **fields)
        except KeyRingError as exc:
            raise refused(exc) from None
        return JSONResponse({"name": body["name"], "scope": body.get("scope", "recognize"), "key": token}, 201)

    @app.delete(
        "/v1/keys/{name}",
        summary="Revoke a key: refused by every web process within about a second",
        dependencies=admin,
    )
    async def revoke(name: str) -> JSONResponse:
        try:
            key = await run_in_threadpool(ring.revoke, name)
        except KeyRingError as exc:
            raise refused(exc) from None
        return JSONResponse(dataclasses.asdict(key))


class _Observe(HttpMiddleware):
    """Gives each request an id (the client's `X-Request-ID` if sane, else a new one), returns
    it, and counts requests by route and status."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        super().__init__(app)
        self.metrics = metrics

    async def handle(self, scope: Any, receive: Any, send: Send, headers: dict[bytes, bytes]) -> None:
        status = {"code": 500}
        given = headers.get(b"x-request-id", b"")
        rid = given.decode() if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        parent = headers.get(b"traceparent", b"")
        traceparent = parent.decode() if _TRACEPARENT.fullmatch(parent) else ""
        scope.setdefault("state", {}).update(request_id=rid, traceparent=traceparent)
        token = logs.current.set((rid, traceparent))  # every line logged about this request names it

        def started(message: Any) -> None:
            status["code"] = message["status"]
            message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]

        try:
            await self.app(scope, receive, on_start(send, started))
        finally:
            logs.current.reset(token)
            route = scope.get("route")
            self.metrics.requests.labels(getattr(route, "path", "other"), str(status["code"])).inc()
