"""The OpenAPI document, as the routes behave: what each takes (multipart fields, JSON bodies,
parameters with their rules), every status it can give with the one error body, the headers,
the security schemes, and the webhook a callback URL receives.

Derived, not copied: the answers' schemas come from the dataclasses the service writes
(`messages.Result`, `access.keys.Key`), the fields and limits from the constants and settings
the routes check (`upload.TEXT_FIELDS`, `COURSE_FIELDS`, `max_files`, the key-name rule), so
a change there changes the document. `tests/test_openapi.py` holds the service to it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_type_hints

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, create_model

from ..access.keys import NAME_PATTERN, PREFIX, SCOPES, Key
from ..config import Settings
from ..messages import ClusterStatus, Result, WorkerView
from ..urls import URL_PATTERN
from .gate import is_loopback
from .service import MAX_CALLBACK_CHARS, MAX_WAIT_S
from .upload import MAX_TEXT_BYTES, TEXT_FIELDS

ID_PATTERN = "^[0-9a-f]{32}$"
_BEARER, _HEADER = "bearer", "apiKey"


class FileError(BaseModel):
    error: str = Field(description="a stable code: too_large, not_an_image, corrupt, …")
    detail: str
    file: str | None = None


class Error(BaseModel):
    """Every refusal: a stable code, a reason people can read, the request's id."""

    error: str = Field(description="a stable code: bad_parameter, unauthorized, rate_limited, too_large, …")
    detail: str = Field(description="for people")
    request_id: str | None = Field(None, description="the X-Request-ID: the service log names it")
    file: str | None = Field(None, description="the file refused, when one was")
    errors: list[FileError] | None = Field(None, description="a request refused whole: every bad file")
    id: str | None = Field(None, description="POST /: the recognition still running when the wait ended")


def _model_of(
    cls: type, title: str, doc: str, overrides: dict[str, Any], hidden: tuple[str, ...] = ()
) -> type[BaseModel]:
    """A response model with `cls`'s fields (its format version and `hidden` left out), each
    optional unless `overrides` says otherwise: one source for what the service writes and shows."""
    hints = get_type_hints(cls)
    left_out = {"v", *hidden}
    fields: dict[str, Any] = {
        f.name: (hints[f.name] | None, None) for f in dataclasses.fields(cls) if f.name not in left_out
    }
    fields.update(overrides)
    model: type[BaseModel] = create_model(title, __doc__=doc, **fields)
    return model


Recognition = _model_of(
    Result,
    "Recognition",
    "One image: its answer once final (done, failed), or where it is (queued, running) and where to ask.",
    {
        "id": (str, Field(pattern=ID_PATTERN)),
        "status": (Literal["queued", "running", "done", "failed"], ...),
        "location": (str | None, Field(None, description="GET it for the status and result")),
        "callback": (dict[str, Any] | None, Field(None, description="the webhook's delivery, when one was asked for")),
    },
)
KeyInfo = _model_of(Key, "KeyInfo", "A key as listed: never the key itself.", {"name": (str, ...), "scope": (str, ...)})


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, description="who or what the key is for")
    scope: Literal[SCOPES] = "recognize"  # type: ignore[valid-type]
    requests_per_s: float | None = Field(None, gt=0)
    images_per_s: float | None = Field(None, gt=0)
    images_per_day: int | None = Field(None, gt=0)


class CreatedKey(BaseModel):
    name: str
    scope: str
    key: str = Field(description=f"{PREFIX}…: shown this once, stored nowhere in clear")


class Me(BaseModel):
    name: str
    scope: str
    auth: str | None = Field(None, description='"off" when the service runs without keys')


class Ready(BaseModel):
    status: Literal["ready", "unavailable", "misconfigured"]
    detail: str | None = None
    queue: dict[str, float] | None = None


WorkerState = _model_of(
    WorkerView, "WorkerState", "A worker: its state; for admin keys, all of it.", {"state": (str, ...)}
)
Cluster = _model_of(
    ClusterStatus,
    "Cluster",
    "Queue depth, workers and their history; for admin keys also the decisions, the policy, the "
    "fleet's errors, the webhooks' counts (what the controller published at its last tick).",
    {
        "queue": (dict[str, Any], ...),
        "workers": (list[WorkerState], ...),  # type: ignore[valid-type]
        "webhooks": (dict[str, Any] | None, None),
        "config_errors": (list[str] | None, Field(None, description="what the operator must fix")),
    },
    hidden=("running",),
)


class Webhook(BaseModel):
    """POSTed to a request's callback URL once its result is final, signed (Standard Webhooks:
    webhook-id, webhook-timestamp, webhook-signature), at least once: drop repeats by webhook-id."""

    type: Literal["recognition.done", "recognition.failed"]
    timestamp: str = Field(description="when the result was final, RFC 3339 UTC")
    data: Recognition  # type: ignore[valid-type]


# -- statuses -----------------------------------------------------------------------------------

_HEADERS = {
    "X-Request-ID": "this request's id, in every log line about it (yours if sane, else a new one)",
    "Retry-After": "seconds to wait before trying again",
    "RateLimit": "what is left of the key's quota (IETF draft RateLimit fields)",
    "RateLimit-Policy": "the key's quota",
    "WWW-Authenticate": "the Bearer challenge",
}
_WHEN = {
    400: "a malformed request: a parameter, body or field out of its rules, or no Host header",
    401: "no API key, or one that is not valid or was revoked",
    403: "the key's scope may not do this, a page of another site, or a URL to a private address",
    404: "no such thing, or not the key's",
    408: "the body stopped arriving",
    409: "it conflicts with what exists",
    413: "too large: a file, the body, or too many files",
    415: "not multipart/form-data or JSON, or a file that is not an image this service reads",
    421: "a Host this service does not answer for",
    422: "an image it cannot read (corrupt, truncated, too many pixels), or a URL it cannot fetch",
    429: "the key's quota is spent: Retry-After says when to try again",
    431: "a part's headers are too large",
    500: "an internal error: the log has it under the request id",
    503: "overloaded, or the store is away a moment: try again after Retry-After",
    504: "no answer within the wait (the image stays queued: GET it later)",
    507: "the service's disk is full",
}
_RETRY = (429, 503, 507)
EVERY = (400, 421, 500, 503)  # the gate and the store: any route
KEYED = (401, 403, 429)  # a route that needs a key
UPLOAD = (403, 408, 413, 415, 422, 431, 507)  # a route that takes images


def _header(name: str) -> dict[str, Any]:
    return {"description": _HEADERS[name], "schema": {"type": "string"}}


def responses(*statuses: int, keyed: bool = True, upload: bool = False) -> dict[int | str, dict[str, Any]]:
    """The refusals a route can give, each with the one Error body and its headers."""
    codes = set(statuses) | set(EVERY) | (set(KEYED) if keyed else set()) | (set(UPLOAD) if upload else set())
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted(codes):
        headers = {"X-Request-ID": _header("X-Request-ID")}
        if code in _RETRY:
            headers["Retry-After"] = _header("Retry-After")
        if code == 429:
            headers |= {"RateLimit": _header("RateLimit"), "RateLimit-Policy": _header("RateLimit-Policy")}
        if code == 401:
            headers["WWW-Authenticate"] = _header("WWW-Authenticate")
        out[code] = {"description": _WHEN[code], "headers": headers, "content": _ERROR_CONTENT}
    return out


# Written out, not `model`: FastAPI would give a plain-text route's refusals its text/plain.
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def ok(
    description: str, *, status: int = 200, model: Any = None, links: dict[str, Any] | None = None
) -> dict[int | str, dict[str, Any]]:
    """A success answer's description and headers (its body: the route's response_model)."""
    headers = {"X-Request-ID": _header("X-Request-ID"), "RateLimit": _header("RateLimit")}
    out: dict[str, Any] = {"description": description, "headers": headers}
    if model is not None:
        out["model"] = model
    if links:
        out["links"] = links
    return {status: out}


# The first image of an answer, asked for again (tools follow it: a generated client, a fuzzer).
FIRST_RESULT = {
    "GetFirstRecognition": {
        "operationId": "get_recognition",
        "parameters": {"rid": "$response.body#/0/id"},
        "description": "the status and result of the answer's first image",
    }
}


# -- what the routes take ----------------------------------------------------------------------


def _text_fields(settings: Settings, callbacks: bool = True) -> dict[str, Any]:
    """The form (or JSON) fields besides the images; a callback URL only where webhooks are
    sent (elsewhere it is refused: 400 webhooks_off)."""
    fields = {
        "callback_url": {
            "type": "string",
            "pattern": URL_PATTERN,
            "maxLength": min(MAX_CALLBACK_CHARS, MAX_TEXT_BYTES),
            "description": "a public http(s) URL to POST the result to when final (a signed webhook)",
        },
        "deadline_s": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": settings.result_ttl_s,
            "description": "seconds after which the answer is of no use: failed, expired, not inferred",
        },
    }
    if not callbacks:
        del fields["callback_url"]
    return fields


def upload_body(settings: Settings, fields: tuple[str, ...], *, urls: bool, callbacks: bool) -> dict[str, Any]:
    """`openapi_extra` of a route that takes images: multipart with a file in any of `fields`
    (and the text fields), or, with `urls`, JSON naming the images' URLs. `callbacks`: whether
    this service sends webhooks."""
    assert set(TEXT_FIELDS) == set(_text_fields(settings))  # one list of the text fields
    text = _text_fields(settings, callbacks)
    image = {"type": "string", "format": "binary", "minLength": 1}  # an empty file: 400 empty
    files = {"type": "array", "items": image, "minItems": 1, "maxItems": settings.max_files}
    multipart: dict[str, Any] = {
        "type": "object",
        # several fields (the course route's): one image, in any of them
        "properties": {name: dict(files) if len(fields) == 1 else image for name in fields} | text,
        "description": f"files in {' or '.join(fields)}: JPEG, PNG, WebP, GIF, BMP, TIFF or AVIF, "
        f"each at most {settings.max_file_bytes} bytes",
    }
    if len(fields) == 1:
        multipart["required"] = list(fields)
    else:
        multipart["anyOf"] = [{"required": [name]} for name in fields]
    content: dict[str, Any] = {"multipart/form-data": {"schema": multipart}}
    if urls:
        url = {"type": "string", "pattern": URL_PATTERN, "description": "a public http(s) URL"}
        one = {"type": "object", "required": ["url"], "properties": {"url": url} | text}
        many = {
            "type": "object",
            "required": ["urls"],
            "not": {"required": ["url"]},  # with both, "url" is taken
            "properties": {"urls": {"type": "array", "items": url, "minItems": 1, "maxItems": settings.max_files}}
            | text,
        }
        content["application/json"] = {"schema": {"oneOf": [one, many]}}
    return {"requestBody": {"required": True, "content": content}}


def path_parameter(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    """A path parameter the route reads itself (`request.path_params`): the document gives its
    rule, and the route answers its own refusal (400, 404), not FastAPI's 422."""
    out: dict[str, Any] = {"name": name, "in": "path", "required": True, "schema": schema}
    return out | ({"description": description} if description else {})


def wait_parameters(settings: Settings, *, wait: bool) -> list[dict[str, Any]]:
    out = [
        {
            "name": "timeout",
            "in": "query",
            "required": False,
            "description": f"seconds to wait for the answers (default {settings.timeout_s:g}; "
            f"above {MAX_WAIT_S:g} counts as {MAX_WAIT_S:g})",
            "schema": {"type": "number", "minimum": 0, "default": settings.timeout_s},
        }
    ]
    if wait:
        out.append(
            {
                "name": "wait",
                "in": "query",
                "required": False,
                "description": "false: answer 202 at once with the ids, GET each later",
                "schema": {"type": "boolean", "default": True},
            }
        )
    return out


# -- the whole document ------------------------------------------------------------------------


def extra(settings: Settings, scope: str | None, *parts: dict[str, Any], anonymous: bool = False) -> dict[str, Any]:
    """A route's `openapi_extra`: the headers every route reads, its security, and `parts`
    (a body, parameters)."""
    params: list[dict[str, Any]] = [
        {
            "name": "X-Request-ID",
            "in": "header",
            "required": False,
            "description": "your id for this request, in every log line about it (kept if 1-64 of "
            "A-Z a-z 0-9 . _ : -, else a new one is made); every answer carries it",
            "schema": {"type": "string"},
        },
        {
            "name": "traceparent",
            "in": "header",
            "required": False,
            "description": "W3C trace context: logged, and passed to the worker and the webhook",
            "schema": {"type": "string"},
        },
    ]
    out: dict[str, Any] = {}
    for part in parts:
        params += part.get("parameters", [])
        out |= {k: v for k, v in part.items() if k != "parameters"}
    out["parameters"] = params
    if scope is not None:
        out["security"] = security(settings, scope, anonymous)
    return out


def security(settings: Settings, scope: str, anonymous: bool) -> list[dict[str, list[str]]]:
    """Which schemes a route takes and with which scope. None is accepted too where a caller
    may come without a key: `anonymous` (the course route), or auth auto on loopback (key-free
    until the first key exists)."""
    if settings.auth == "off":
        return []
    needed: list[dict[str, list[str]]] = [{_BEARER: [scope]}, {_HEADER: [scope]}]
    keyless = settings.auth == "auto" and is_loopback(settings.host)
    return [{}, *needed] if anonymous or keyless else needed


def finish(document: dict[str, Any]) -> dict[str, Any]:
    """What FastAPI does not write: the security schemes and the webhook."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    error = Error.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas |= error.pop("$defs", {}) | {"Error": error}
    components["securitySchemes"] = {
        _BEARER: {"type": "http", "scheme": "bearer", "description": f"Authorization: Bearer {PREFIX}…"},
        _HEADER: {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "the key, another way"},
    }
    return document


def publish(app: FastAPI) -> None:
    """The app's /openapi.json: FastAPI's, with the webhook and what FastAPI does not write."""
    _webhook(app)
    _document(app)


def _document(app: FastAPI) -> None:
    """/openapi.json: FastAPI's, with what it does not write (security schemes)."""
    make = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = finish(make())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _webhook(app: FastAPI) -> None:
    @app.webhooks.post("recognition", summary="POSTed to a request's callback_url when its result is final")
    def recognition_webhook(body: Webhook) -> None:
        """Signed with the service's webhook secret (Standard Webhooks: `webhook-id`, the request
        id, the same on every attempt; `webhook-timestamp`; `webhook-signature`), with the
        request's `X-Request-ID` and `traceparent`. Answer 2xx within the time-out, or it is
        tried again, for hours: docs/integrating.md."""
