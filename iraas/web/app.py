"""The web tier: HTTP API, course-compatible endpoint, metrics, cluster view and browser UI."""

from __future__ import annotations

import asyncio
import contextlib
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
from starlette.routing import Match

from .. import logs
from ..blobs.base import BlobError
from ..config import Settings
from ..queues.base import QueueError
from ..refusals import InputError
from ..urls import Resolver, system_resolver
from .asgi import HttpMiddleware, Send, on_start
from .auth import Access, Caller
from .gate import Gate, allowed_hosts
from .key_routes import key_routes
from .metrics import Metrics
from .openapi import (
    FIRST_RESULT,
    ID_PATTERN,
    Me,
    Ready,
    Recognition,
    extra,
    ok,
    path_parameter,
    publish,
    responses,
    upload_body,
    wait_parameters,
)
from .openapi import Cluster as ClusterAnswer
from .service import WebParts, WebService, location

log = logging.getLogger(__name__)
_ID = re.compile(ID_PATTERN)
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
    _status_route(app, svc, access)
    _course_routes(app, svc, access)
    _page_routes(app)
    _me_route(app, svc, access)
    _probe_routes(app, svc)
    _cluster_routes(app, svc, access)
    key_routes(app, access, settings)
    for mount in mounts:
        mount(app, svc, access)
    publish(app)
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
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette's names the first route's methods, not the path's
            headers["Allow"] = ", ".join(allowed_methods(request))
        return JSONResponse(
            body(request, {"error": code, "detail": str(exc.detail)}), status_code=exc.status_code, headers=headers
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("request %s failed", request_id(request), exc_info=exc)
        detail = "an internal error; the service log has the details under this request id"
        return JSONResponse(body(request, {"error": "internal", "detail": detail}), status_code=500)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of this path answers."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def _recognition_routes(app: FastAPI, svc: WebService, access: Access) -> None:
    s = svc.settings

    @app.post(
        "/v1/recognitions",
        operation_id="recognize",
        summary="Classify one or more images (multipart `files`, or JSON url/urls)",
        response_model=list[Recognition],  # type: ignore[valid-type]
        responses=ok("the answers, one per image in order (queued: not final within the wait)", links=FIRST_RESULT)
        | ok(
            "wait=false: queued, one per image; Location names the one if one",
            status=202,
            model=list[Recognition],  # type: ignore[valid-type]
            links=FIRST_RESULT,
        )
        | responses(409, upload=True),
        openapi_extra=extra(
            s,
            "recognize",
            upload_body(s, ("files",), urls=True, callbacks=svc.takes_callbacks),
            {"parameters": wait_parameters(s, wait=True)},
        ),
    )
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


def _status_route(app: FastAPI, svc: WebService, access: Access) -> None:
    rid_parameter = path_parameter("rid", {"type": "string", "pattern": ID_PATTERN})

    @app.get(
        "/v1/recognitions/{rid}",
        operation_id="get_recognition",
        summary="Status and result of one image (the key that sent it, or admin)",
        response_model=Recognition,
        responses=ok("its result, or where it is") | responses(404, 503),
        openapi_extra=extra(svc.settings, "recognize", {"parameters": [rid_parameter]}),
    )
    async def recognition(request: Request, caller: Caller = Depends(access.recognize)) -> JSONResponse:
        rid = str(request.path_params["rid"])
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
    s = svc.settings
    for path in s.course_paths:  # wherever the deployment's course clients POST
        app.add_api_route(
            path,
            course,
            methods=["POST"],
            operation_id="course" if path == "/" else f"course_{path.strip('/').replace('/', '_')}",
            summary=f"Course-compatible: multipart `inputFile` or `myfile`; answers {answer} in plain text",
            response_class=PlainTextResponse,
            responses=ok(f"{answer}, in plain text") | responses(504, upload=True),
            openapi_extra=extra(
                s,
                "recognize",
                upload_body(s, COURSE_FIELDS, urls=False, callbacks=svc.takes_callbacks),
                {"parameters": wait_parameters(s, wait=False)},
                anonymous=s.anonymous_course,
            ),
        )


def _page_routes(app: FastAPI) -> None:
    """The browser page and its two files."""

    @app.get(
        "/",
        operation_id="page",
        response_class=HTMLResponse,
        summary="The browser page: upload images, watch the workers",
        responses=ok("the page (HTML)") | responses(keyed=False),
    )
    async def ui() -> FileResponse:
        return FileResponse(_STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        if name not in _ASSETS:
            raise InputError(404, "not_found", f"no file {name[:60]!r}")
        return FileResponse(_STATIC / name, media_type=_ASSETS[name])


def _me_route(app: FastAPI, svc: WebService, access: Access) -> None:
    s = svc.settings

    @app.get(
        "/v1/me",
        operation_id="me",
        summary="The key this request was made with: its name and scope",
        response_model=Me,
        responses=ok("the key's name and scope") | responses(),
        openapi_extra=extra(s, "recognize"),
    )
    async def me(caller: Caller = Depends(access.recognize)) -> JSONResponse:
        return JSONResponse(access.whoami(caller))


def _probe_routes(app: FastAPI, svc: WebService) -> None:
    """Liveness and readiness, for a load balancer or Kubernetes: no key."""
    s = svc.settings

    @app.get(
        "/healthz",
        operation_id="health",
        summary="Liveness: the process answers",
        responses=ok("alive") | responses(keyed=False),
        openapi_extra=extra(s, None),
    )
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        operation_id="ready",
        summary="Readiness: the queue and the store can be written and the disk has room",
        response_model=Ready,
        responses=ok("ready") | responses(keyed=False) | ok("not ready, and why", status=503, model=Ready),
        openapi_extra=extra(s, None),
    )
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


def _cluster_routes(app: FastAPI, svc: WebService, access: Access) -> None:
    s = svc.settings

    @app.get(
        "/v1/cluster",
        operation_id="cluster",
        summary="Queue depth and workers; for admin keys, also decisions and errors",
        response_model=ClusterAnswer,
        responses=ok("the cluster") | responses(503),
        openapi_extra=extra(s, "recognize"),
    )
    async def cluster(caller: Caller = Depends(access.recognize)) -> JSONResponse:
        admin = caller.scope == "admin"
        view = await run_in_threadpool(svc.view, admin)
        return JSONResponse(view.answer(admin))

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(access.metrics)])
    async def prometheus() -> Response:
        view = await run_in_threadpool(svc.view, True)
        svc.metrics.scraped(view)
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)


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
            self.metrics.labelled(self.metrics.requests, getattr(route, "path", "other"), str(status["code"])).inc()
