"""Request and result formats (versioned JSON). Requests never carry image bytes: only keys."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from typing import Any, TypeVar

VERSION = 1


class MessageError(ValueError):
    """A message body that is not a request or result of a version we understand."""


T = TypeVar("T", bound="_Json")


class _Json:
    """Compact JSON of a message dataclass; unknown fields are ignored when read, so a newer
    writer may add fields; the version must match."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))  # type: ignore[call-overload]

    @classmethod
    def from_json(cls: type[T], text: str | bytes) -> T:
        return cls(**_load(text, cls))


@dataclass(frozen=True)
class Request(_Json):
    id: str
    input_key: str  # blob key of the image bytes (content-addressed)
    name: str  # the client's file name or URL, for answers
    model: str
    reply_to: str  # reply queue of the web process that waits ("" when nobody waits)
    submitted_at: float
    dedup: str = ""  # blob key for the answer to the same bytes later ("" = none); the web decides
    model_version: str = ""  # faces: the gallery version that key is for
    task: str = "recognize"  # recognize | enroll (faces: add the image to the gallery as `person`)
    person: str = ""
    trace: str = ""  # the client's X-Request-ID (or the one the web made): in every log line about it
    traceparent: str = ""  # W3C trace context, when the client sent one
    deadline: float = 0.0  # epoch seconds past which it is answered `failed: expired`, never inferred
    callback: str = ""  # where its final result is POSTed, signed (webhooks.py)
    v: int = VERSION


@dataclass(frozen=True)
class Result(_Json):
    id: str
    name: str
    status: str  # done | failed
    model: str
    label: str | None = None
    confidence: float | None = None
    top5: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # machine code, e.g. truncated, gave_up
    reason: str | None = None  # for people
    timings: dict[str, float] = field(default_factory=dict)  # seconds: queued, inference, total
    worker: str | None = None
    cached: bool = False
    request_id: str = ""  # the X-Request-ID of the HTTP request that sent it
    v: int = VERSION

    @classmethod
    def failure(
        cls, req: Request, code: str, reason: str, *, timings: dict[str, float], worker: str | None = None
    ) -> Result:
        """The final answer for a request that cannot be recognised."""
        return cls(
            id=req.id,
            name=req.name,
            status="failed",
            model=req.model,
            error=code,
            reason=reason,
            timings=timings,
            worker=worker,
            request_id=req.trace,
        )

    @cached_property
    def encoded(self) -> str:
        """The JSON, made once however many places (store, reply, dedup) send it."""
        return self.to_json()

    def as_dict(self) -> dict[str, Any]:
        """The fields an API answer shows (no format version)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "v"}


def _load(text: str | bytes, cls: type) -> dict[str, Any]:
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise MessageError(f"not JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("v") != VERSION:
        raise MessageError(f"not a version-{VERSION} {cls.__name__.lower()}")
    known = {f.name for f in fields(cls)}
    return {k: v for k, v in raw.items() if k in known}


@dataclass(frozen=True)
class Delivery(_Json):
    """One webhook to deliver: a final result for a request that named a callback URL. The
    payload is made once; every attempt signs it anew with the same id."""

    id: str  # the request id: the webhook-id header, the same on every attempt
    url: str
    payload: str  # the JSON body POSTed
    first_at: float  # when the result was final: retries stop `webhook_retry_for_s` after it
    trace: str = ""
    traceparent: str = ""
    v: int = VERSION


FACES = "faces"  # the face recognizer's model name
