"""The gallery's routes (`/v1/gallery`), mounted only when the faces model is served."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..refusals import InputError
from ..web.app import Mount
from ..web.auth import Access, Caller
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


def _current(store: GalleryStore) -> Any:
    from ..model.recognizer import faces_module  # the gallery format only (numpy)

    return faces_module().Gallery.merged(store.load_gallery())


def _reading(app: FastAPI, access: Access, store: GalleryStore) -> None:
    admin = [Depends(access.admin)]

    @app.get("/v1/gallery", summary="People enrolled, with their number of photos", dependencies=admin)
    async def people() -> JSONResponse:
        gallery = await run_in_threadpool(_current, store)
        return JSONResponse({"people": gallery.people(), "images": len(gallery.names)})

    @app.delete("/v1/gallery/{name}", summary="Remove a person: every photo enrolled until now", dependencies=admin)
    async def remove(name: str) -> JSONResponse:
        people = (await run_in_threadpool(_current, store)).people()
        name = person_name(name, people)
        if name not in people:
            raise InputError(404, "not_found", f"nobody named {name!r} is enrolled")
        if len(people) == 1:
            raise InputError(409, "last_person", "the gallery would be empty: enrol someone else first")
        await run_in_threadpool(store.remove_person, name)
        return JSONResponse({"person": name, "removed": people[name]})


def _enrolling(app: FastAPI, svc: WebService, access: Access, store: GalleryStore) -> None:
    @app.post("/v1/gallery/{name}", summary="Add photos (multipart `files`) of a person")
    async def add(name: str, request: Request, caller: Caller = Depends(access.admin)) -> JSONResponse:
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
