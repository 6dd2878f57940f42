"""Key management over HTTP for admin keys, the same verbs as `iraas keys`: a key is shown once."""

from __future__ import annotations

import dataclasses

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from ..access.keys import KeyRingError
from ..config import Settings
from ..refusals import InputError
from .auth import Access
from .openapi import CreatedKey, KeyInfo, NewKey, extra, ok, path_parameter, responses

_NEW_KEY = NewKey.model_json_schema()
_NAME = path_parameter("name", _NEW_KEY["properties"]["name"])
_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": _NEW_KEY}}}}


def _refused(exc: KeyRingError) -> InputError:
    return InputError(exc.status, exc.code, str(exc))


def key_routes(app: FastAPI, access: Access, settings: Settings) -> None:
    ring, admin = access.ring, [Depends(access.admin)]

    @app.get(
        "/v1/keys",
        operation_id="list_keys",
        summary="Every key: name, scope, limits, created, revoked (never the key)",
        dependencies=admin,
        response_model=list[KeyInfo],  # type: ignore[valid-type]
        responses=ok("every key") | responses(503),
        openapi_extra=extra(settings, "admin"),
    )
    async def keys() -> JSONResponse:
        return JSONResponse([dataclasses.asdict(k) for k in await run_in_threadpool(ring.all)])

    _changes(app, access, settings)


def _changes(app: FastAPI, access: Access, settings: Settings) -> None:
    ring, admin = access.ring, [Depends(access.admin)]

    @app.post(
        "/v1/keys",
        operation_id="create_key",
        summary='Create a key: JSON {"name", "scope", limits}; the answer shows it once',
        dependencies=admin,
        status_code=201,
        response_model=CreatedKey,
        responses=ok("the new key, shown this once", status=201) | responses(409, 413, 503),
        openapi_extra=extra(settings, "admin", _BODY),
    )
    async def create(request: Request) -> JSONResponse:
        asked = _new_key(await request.body(), settings.max_json_bytes)
        limits = asked.model_dump(exclude={"name", "scope"}, exclude_none=True)
        try:
            token = await run_in_threadpool(ring.create, asked.name, asked.scope, **limits)
        except KeyRingError as exc:
            raise _refused(exc) from None
        return JSONResponse({"name": asked.name, "scope": asked.scope, "key": token}, 201)

    @app.delete(
        "/v1/keys/{name}",
        operation_id="revoke_key",
        summary="Revoke a key: refused by every web process within about a second",
        dependencies=admin,
        response_model=KeyInfo,
        responses=ok("the key, revoked") | responses(404, 503),
        openapi_extra=extra(settings, "admin", {"parameters": [_NAME]}),
    )
    async def revoke(request: Request) -> JSONResponse:
        try:
            key = await run_in_threadpool(ring.revoke, str(request.path_params["name"]))
        except KeyRingError as exc:
            raise _refused(exc) from None
        return JSONResponse(dataclasses.asdict(key))


def _new_key(raw: bytes, most: int) -> NewKey:
    """The body, read by the model the document shows; 400 bad_json saying what is wrong."""
    if len(raw) > most:
        raise InputError(413, "request_too_large", f"the body is over {most} bytes")
    try:
        return NewKey.model_validate_json(raw)
    except ValidationError as exc:
        wrong = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise InputError(
            400, "bad_json", f'send {{"name": ..., "scope": "recognize" | "admin"}}: {wrong}'[:400]
        ) from None
