"""The gallery's routes (`/v1/gallery`), mounted only when the faces model is served."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..refusals import InputError
from ..web.app import Mount
from ..web.auth import Access, Caller
from ..web.openapi import extra, ok, path_parameter, responses, upload_body, wait_parameters
from ..web.service import WebService
from .gallery import GalleryStore
from .names import person_name


def gallery_routes(gallery: GalleryStore) -> Mount:
    """Model "faces": the people a running service knows, and adding photos of someone. The
    web tier runs no face model: enrolment is a job for the workers, like recognition."""

    def mount(app: FastAPI, svc: WebService, access: Access) -> None:
        _reading(app, access, gallery)
        _enrolling(app, svc, access, gallery)

    return mount


_NAME = path_parameter(
    "name",
    {"type": "string", "minLength": 1, "maxLength": 64},
    "a person: 1-64 letters, digits, spaces, . ' - or _, in one script",
)


def _current(store: GalleryStore) -> Any:
    from ..model.recognizer import faces_module  # the gallery format only (numpy)

    return faces_module().Gallery.merged(store.load_gallery())


def _reading(app: FastAPI, access: Access, store: GalleryStore) -> None:
    admin = [Depends(access.admin)]

    @app.get(
        "/v1/gallery",
        summary="People enrolled, with their number of photos",
        dependencies=admin,
        operation_id="gallery",
        responses=ok("who is enrolled") | responses(503),
        openapi_extra=extra(access.settings, "admin"),
    )
    async def people() -> JSONResponse:
        gallery = await run_in_threadpool(_current, store)
        return JSONResponse({"people": gallery.people(), "images": len(gallery.names)})

    @app.delete(
        "/v1/gallery/{name}",
        summary="Remove a person: every photo enrolled until now",
        dependencies=admin,
        operation_id="remove_person",
        responses=ok("removed") | responses(404, 409, 503),
        openapi_extra=extra(access.settings, "admin", {"parameters": [_NAME]}),
    )
    async def remove(request: Request) -> JSONResponse:
        name = str(request.path_params["name"])
        people = (await run_in_threadpool(_current, store)).people()
        name = person_name(name, people)
        if name not in people:
            raise InputError(404, "not_found", f"nobody named {name!r} is enrolled")
        if len(people) == 1:
            raise InputError(409, "last_person", "the gallery would be empty: enrol someone else first")
        await run_in_threadpool(store.remove_person, name)
        return JSONResponse({"person": name, "removed": people[name]})


def _enrolling(app: FastAPI, svc: WebService, access: Access, store: GalleryStore) -> None:
    s = svc.settings

    @app.post(
        "/v1/gallery/{name}",
        summary="Add photos (multipart `files`) of a person",
        operation_id="enrol",
        responses=ok("added")
        | ok("some photos still queued: GET /v1/gallery later", status=202)
        | responses(409, upload=True),
        openapi_extra=extra(
            s,
            "admin",
            upload_body(s, ("files",), urls=False, callbacks=False),
            {"parameters": [_NAME, *wait_parameters(s, wait=False)]},
        ),
    )
    async def add(request: Request, caller: Caller = Depends(access.admin)) -> JSONResponse:
        name = str(request.path_params["name"])
        timeout = svc.timeout(request)
        known = (await run_in_threadpool(_current, store)).people()
        name = person_name(name, known)
        items, extras = await svc.gather(request, ("files",))
        items = await access.charge(request, caller, items)
        entries = await svc.submit_and_wait(
            items, True, timeout, owner=caller.owner, task="enroll", person=name, extras=extras
        )
        store.gallery_changed()  # the next recognition here asks for the gallery with them
        done = [e for e in entries if e["status"] == "done"]
        problems = [e["reason"] for e in done if e.get("reason")]
        problems += [f"{e['name']}: {e.get('reason')}" for e in entries if e["status"] == "failed"]
        pending = [e["id"] for e in entries if e["status"] not in ("done", "failed")]
        gallery = await run_in_threadpool(_current, store)
        body = {"person": name, "added": len(done), "images": gallery.people().get(name, 0), "problems": problems}
        return JSONResponse(body | {"pending": pending}, status_code=202 if pending else 200)
