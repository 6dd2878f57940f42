"""Everything one process hands another, as versioned JSON: requests (never image bytes, only
keys), results, webhook deliveries and their state, worker heartbeats and the cluster status."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from functools import cache, cached_property
from typing import Any, TypeVar

VERSION = 1


class MessageError(ValueError):
    """A message body that is not a request or result of a version we understand."""


T = TypeVar("T", bound="_Json")


class _Json:
    """Compact JSON of a message dataclass; unknown fields are ignored when read, so a newer
    writer may add fields; the version must match. `_UNVERSIONED_OK`: the format was written
    without a version before it was typed here (read as version 1, so an upgrade in place
    keeps working)."""

    _UNVERSIONED_OK = False

    def to_json(self) -> str:
        # Not dataclasses.asdict: it deep-copies every nested list and dict first, which cost a
        # worker ~0.4 ms of GIL-held time a result (py-spy); json walks them as they are.
        return json.dumps(_fields(self), separators=(",", ":"), default=_nested)

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
    callback: str = ""  # where its final result is POSTed, signed (iraas/webhooks/)
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
    def of(cls, req: Request, status: str, *, timings: dict[str, float], worker: str | None, **fields: Any) -> Result:
        """`req`'s answer: its id, name, model and trace, with `fields` (label, top5, …)."""
        return cls(
            id=req.id,
            name=req.name,
            status=status,
            model=req.model,
            timings=timings,
            worker=worker,
            request_id=req.trace,
            **fields,
        )

    @classmethod
    def failure(
        cls, req: Request, code: str, reason: str, *, timings: dict[str, float], worker: str | None = None
    ) -> Result:
        """The final answer for a request that cannot be recognised."""
        return cls.of(req, "failed", timings=timings, worker=worker, error=code, reason=reason)

    @cached_property
    def encoded(self) -> str:
        """The JSON, made once however many places (store, reply, dedup) send it."""
        return self.to_json()

    def as_dict(self) -> dict[str, Any]:
        """The fields an API answer shows (no format version)."""
        return {k: v for k, v in _fields(self).items() if k != "v"}


def _fields(message: Any) -> dict[str, Any]:
    cls: Any = type(message)
    return {name: getattr(message, name) for name in _names(cls)}


@cache
def _names(cls: Any) -> tuple[str, ...]:
    """A message class's field names (dataclasses.fields() builds them anew on every call:
    several times an image, per message made or read)."""
    return tuple(f.name for f in fields(cls))


def _nested(value: Any) -> dict[str, Any]:
    """A dataclass inside a message (a cluster status's workers), as JSON writes it."""
    if is_dataclass(value) and not isinstance(value, type):
        return _fields(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _load(text: str | bytes, cls: type) -> dict[str, Any]:
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise MessageError(f"not JSON: {exc}") from None
    if isinstance(raw, dict) and getattr(cls, "_UNVERSIONED_OK", False):
        raw.setdefault("v", VERSION)
    if not isinstance(raw, dict) or raw.get("v") != VERSION:
        raise MessageError(f"not a version-{VERSION} {cls.__name__.lower()}")
    known = _names(cls)
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


OUTCOMES = ("delivered", "retried", "failed")  # of one webhook attempt, as counted and exported


@dataclass(frozen=True)
class CallbackState(_Json):
    """A webhook's delivery so far, as a status answer shows it (`shown`) and the deliverer keeps
    it (callbacks/<id>.json)."""

    status: str  # pending | delivered | failed
    attempts: int = 0
    last_error: str | None = None
    delivered_at: float | None = None
    next_attempt_at: float | None = None
    last_attempt_at: float | None = None
    v: int = VERSION
    _UNVERSIONED_OK = True

    def shown(self) -> dict[str, Any]:
        """What a status answer shows (never the URL: it may carry a token)."""
        keys = ("status", "attempts", "last_error", "delivered_at", "next_attempt_at")
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True)
class Heartbeat(_Json):
    """A worker's state, as any controller or web process reads it."""

    worker: str
    pid: int
    state: str  # starting | idle | busy | stopping
    at: float  # wall clock of this beat
    started_at: float
    processed: int = 0
    failed: int = 0
    current: list[str] = field(default_factory=list)  # request ids in hand
    error: str = ""  # a configuration error stopping its work (a permission its role lacks)
    cpu: float | None = None  # CPU use over the last period, a fraction of its cores (None: not known)
    rate: float = 0.0  # images/s while busy (0: none handled yet)
    v: int = VERSION
    _UNVERSIONED_OK = True


@dataclass(frozen=True)
class WorkerView:
    """One worker as the controller last saw it (the fleet's listing and its heartbeat)."""

    id: str
    state: str
    last_heartbeat: float | None
    processed: int
    error: str
    launched_at: float


@dataclass(frozen=True)
class ClusterStatus(_Json):
    """What the controller saw and did at its last tick (cluster/status.json): for /v1/cluster,
    /metrics, the page and status queries ("running" ids)."""

    at: float | None = None
    running: list[str] = field(default_factory=list)  # request ids in workers' hands
    queue: dict[str, int] = field(default_factory=dict)  # visible, in_flight, dead_lettered
    load: dict[str, float | None] = field(default_factory=dict)  # controller.load.Load.figures
    dead_letters_total: int = 0
    workers: list[WorkerView] = field(default_factory=list)
    history: list[list[float]] = field(default_factory=list)  # [at, waiting, in flight, workers]
    decisions: list[dict[str, Any]] = field(default_factory=list)  # newest last
    policy: dict[str, Any] | None = None
    fleet_errors: list[dict[str, Any]] = field(default_factory=list)
    warm: dict[str, Any] | None = None
    by: str = ""  # "<host>:<pid>" of the controller that holds the duties and published this
    v: int = VERSION
    _UNVERSIONED_OK = True

    @classmethod
    def from_json(cls, text: str | bytes) -> ClusterStatus:
        raw = _load(text, cls)
        raw["workers"] = [WorkerView(**w) for w in raw.get("workers", [])]
        return cls(**raw)

    def as_dict(self) -> dict[str, Any]:
        """As /v1/cluster shows it: every field but the version and the ids in hand."""
        out = asdict(self)
        del out["v"], out["running"]
        return out


FACES = "faces"  # the face recognizer's model name
