"""The store layer: every key and the whole life of a request, over a queue and a blob store.

Web tier, worker and controller call these verbs and never format a key or parse a stored
result themselves (dramatiq's results backend is the model: the lifecycle written once).

    inputs/<sha256>            the image bytes, content-addressed (many requests share one)
    results/<id>.json          the final Result: the first write wins, every reader sees it
    dedup/<model>/<sha256>.json the answer for the same bytes later
    callbacks/<id>.json        a webhook's delivery: status, attempts, last error (webhooks/)
    cluster/webhooks.json      the delivering process's counts by outcome, for /metrics
    heartbeats/<worker>.json   each worker's state (not fsynced: a lost beat is the next one)
    cluster/status.json        what the controller saw and did, ids in hand included
    gallery/faces.npz, .version the face gallery (from --gallery) and its version
    gallery/enrolments/<id>.npz each photo enrolled through the API: kept apart, so that a restart
                               or two enrolments at once lose none
    gallery/removals/<h>.json  a person removed, and when: photos enrolled before then are left out
    config/id-key              the key that signs request ids (and their owner: the API key's name)
    keys/, usage/              API keys and the day's image counts: iraas/access owns them

A request id is 16 bytes, 32 hex digits: issue time (4), random (6), HMAC (6). The signature
lets any web process tell an id it issued (queued, running or done) from one it never did
(404) without a request record written per image; the time lets it expire.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import IO, Any

from .access.quota import USAGE, USAGE_RETENTION_S
from .blobs.base import BlobNotFound, BlobStore
from .messages import FACES, Delivery, Heartbeat, MessageError, Request, Result
from .model.gallery import GalleryParts
from .queues.base import Queue
from .queues.group import GroupSender
from .replies import Inbox, Replies

log = logging.getLogger(__name__)

_HEARTBEATS = "heartbeats/"
_STATUS = "cluster/status.json"
_DELIVERY_STATS = "cluster/webhooks.json"
_CALLBACKS = "callbacks/"
_GALLERY = "gallery/faces.npz"
_GALLERY_VERSION = "gallery/faces.version"
_ENROLMENTS = "gallery/enrolments/"
_REMOVALS = "gallery/removals/"
_ID_KEY = "config/id-key"
_PROBE = "config/ready-probe"


def _stamp(rid: str) -> float:
    """When a request id was issued: its first 4 bytes (8 hex digits), epoch seconds."""
    return float(int(rid[:8], 16))


def _shown(callback: dict[str, Any]) -> dict[str, Any]:
    """A delivery's state as a status answer shows it (not the URL: it may carry a token)."""
    return {k: callback.get(k) for k in ("status", "attempts", "last_error", "delivered_at", "next_attempt_at")}


def _result_key(rid: str) -> str:
    return f"results/{rid}.json"


class Store:
    def __init__(
        self,
        *,
        requests: Queue,
        blobs: BlobStore,
        replies: Replies,
        deliveries: Queue | None = None,
        clock: Callable[[], float] = time.time,
        status_ttl_s: float = 0.25,
    ) -> None:
        """`deliveries`: the webhooks' own queue (None: this deployment delivers none)."""
        self.requests, self.blobs, self.replies, self.clock = requests, blobs, replies, clock
        self.deliveries = deliveries
        self.status_ttl_s = status_ttl_s
        self._sender = GroupSender(requests)
        self._id_key: bytes | None = None
        self._status: tuple[float, dict[str, Any]] | None = None
        self._version_cache: tuple[float, str] | None = None  # (monotonic time read, version)
        self._lock = threading.Lock()

    # -- request ids -------------------------------------------------------------------------

    def _key(self) -> bytes:
        if self._id_key is None:
            fresh = secrets.token_bytes(32)
            # Every web process must sign with the same key: the first one written wins.
            if not self.blobs.put(_ID_KEY, fresh, if_absent=True):
                fresh = self.blobs.get(_ID_KEY)
            self._id_key = fresh
        return self._id_key

    def _mac(self, body: bytes, owner: str) -> bytes:
        # An owner (the API key's name) is signed into the id: only that key, or an admin who
        # tries every name, can tell the id was issued. No owner: the MAC of ids before keys.
        return hmac.new(self._key(), body + (b"\0" + owner.encode() if owner else b""), hashlib.sha256).digest()[:6]

    def new_ids(self, n: int, owner: str = "") -> list[str]:
        stamp = int(self.clock()).to_bytes(4, "big")
        out = []
        for _ in range(n):
            body = stamp + secrets.token_bytes(6)
            out.append((body + self._mac(body, owner)).hex())
        return out

    def issued_at(self, rid: str, owners: Iterable[str] = ("",)) -> float | None:
        """When this deployment issued `rid` for one of `owners`, or None if it never did."""
        try:
            raw = bytes.fromhex(rid)
        except ValueError:
            return None
        if len(raw) != 16:
            return None
        if any(hmac.compare_digest(self._mac(raw[:10], owner), raw[10:]) for owner in owners):
            return _stamp(rid)
        return None

    # -- intake (web tier) -------------------------------------------------------------------

    def put_input(self, data: bytes | IO[bytes], digest: str) -> None:
        """Store the image bytes (whose SHA-256 is `digest`) once, whoever sends them. Not
        fsynced, like the queue's own commits (SQLite synchronous=NORMAL): both survive any
        process crash; a power cut may cost the last moments, and a request that outlives its
        input is answered `failed: input_missing`, never lost."""
        self.blobs.put(f"inputs/{digest}", data, if_absent=True, durable=False)

    def request(
        self,
        *,
        rid: str,
        digest: str,
        name: str,
        model: str,
        reply_to: str,
        submitted_at: float,
        task: str = "recognize",
        person: str = "",
        trace: str = "",
        traceparent: str = "",
        deadline: float = 0.0,
        callback: str = "",
    ) -> Request:
        version = self.model_version(model)
        dedup = task == "recognize"
        return Request(
            id=rid,
            input_key=f"inputs/{digest}",
            name=name,
            model=model,
            reply_to=reply_to,
            submitted_at=submitted_at,
            dedup=self._dedup_key(model, version, digest) if dedup else "",
            model_version=version,
            task=task,
            person=person,
            trace=trace,
            traceparent=traceparent,
            deadline=deadline,
            callback=callback,
        )

    def enqueue(self, reqs: list[Request]) -> None:
        """Send the requests, sharing queue calls with other threads sending at the same time."""
        self._sender.send([r.to_json() for r in reqs])

    def answer_from_cache(self, req: Request) -> Result | None:
        """The stored answer for the same bytes and model, published as `req`'s result."""
        prior = self._load(req.dedup) if req.dedup else None
        if prior is None:
            return None
        result = replace(
            prior,
            id=req.id,
            name=req.name,
            timings={"queued": 0.0, "inference": 0.0, "total": round(self.clock() - req.submitted_at, 4)},
            worker=None,
            cached=True,
            request_id=req.trace,
        )
        return self.finish(req, result)

    @staticmethod
    def _dedup_key(model: str, version: str, digest: str) -> str:
        return f"dedup/{model}-{version}/{digest}.json" if version else f"dedup/{model}/{digest}.json"

    def model_version(self, model: str) -> str:
        """The part of a model's identity that changes while it serves: the face gallery.
        Cached for a second (enrolments reach answers within about that)."""
        if model != FACES:
            return ""
        now = time.monotonic()
        cached = self._version_cache
        if cached is None or now - cached[0] > 1.0:
            cached = (now, self.gallery_version() or "none")
            self._version_cache = cached
        return cached[1]

    # -- results -----------------------------------------------------------------------------

    def load_input(self, req: Request) -> bytes | None:
        try:
            return self.blobs.get(req.input_key)
        except BlobNotFound:
            return None

    def load_result(self, rid: str) -> Result | None:
        return self._load(_result_key(rid))

    def _load(self, key: str) -> Result | None:
        try:
            return Result.from_json(self.blobs.get(key))
        except BlobNotFound:
            return None
        except MessageError:
            log.error("unreadable result at %s: treated as absent", key)
            return None

    def publish_result(self, result: Result) -> Result:
        """Store the final result unless one exists; returns the one that stands."""
        key = _result_key(result.id)
        if self.blobs.put(key, result.encoded.encode(), if_absent=True):
            return result
        return self._load(key) or result

    def finish(self, req: Request, result: Result) -> Result:
        """`req`'s final result: stored unless one exists (the one that stands is returned),
        then its webhook queued if it named a callback."""
        final = self.publish_result(result)
        if req.callback:
            if final is result:
                self.schedule_delivery(req, final)
            else:
                self.ensure_delivery(req, final)
        return final

    def ensure_delivery(self, req: Request, result: Result) -> None:
        """Queue `req`'s webhook unless it was (a redelivery of a request whose result exists:
        the worker before may have died before queueing it). Its record is written after the
        send, so a crash between the two queues it twice: at least once, with the same
        webhook-id, which receivers use to drop repeats."""
        if req.callback and self.callback_state(req.id) is None:
            self.schedule_delivery(req, result)

    def schedule_delivery(self, req: Request, result: Result) -> None:
        if self.deliveries is None:
            log.error("request %s named a callback, but this deployment delivers no webhooks", req.id)
            return
        now = self.clock()
        status = "recognition.done" if result.status == "done" else "recognition.failed"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        payload = json.dumps({"type": status, "timestamp": stamp, "data": result.as_dict()}, separators=(",", ":"))
        job = Delivery(
            id=req.id,
            url=req.callback,
            payload=payload,
            first_at=now,
            trace=req.trace,
            traceparent=req.traceparent,
        )
        self.deliveries.send(job.to_json())
        pending = json.dumps({"status": "pending", "attempts": 0, "last_error": None}).encode()
        self.blobs.put(f"{_CALLBACKS}{req.id}.json", pending, if_absent=True, durable=False)

    def callback_state(self, rid: str) -> dict[str, Any] | None:
        """A webhook's delivery so far ({status, attempts, last_error, …}), None before any."""
        try:
            state: dict[str, Any] = json.loads(self.blobs.get(f"{_CALLBACKS}{rid}.json"))
        except (BlobNotFound, ValueError):
            return None
        return state

    def record_callback(self, rid: str, state: dict[str, Any]) -> None:
        self.blobs.put(f"{_CALLBACKS}{rid}.json", json.dumps(state).encode(), durable=False)

    def publish_delivery_stats(self, stats: dict[str, Any]) -> None:
        self.blobs.put(_DELIVERY_STATS, json.dumps(stats).encode(), durable=False)

    def delivery_stats(self) -> dict[str, Any]:
        try:
            stats: dict[str, Any] = json.loads(self.blobs.get(_DELIVERY_STATS))
        except (BlobNotFound, ValueError):
            return {}
        return stats

    def remember(self, req: Request, result: Result) -> None:
        """The answer for the same bytes later (an optimisation: after the reply)."""
        if req.dedup and result.status == "done":
            self.blobs.put(req.dedup, result.encoded.encode(), if_absent=True, durable=False)

    def reply(self, to: str, result: Result) -> bool:
        """Hand `result` to the web process that waits; False if none does any more."""
        return bool(to) and self.replies.send(to, result.encoded)

    def inbox(self, name: str) -> Inbox:
        return self.replies.inbox(name)

    def status(self, rid: str, result_ttl_s: float = math.inf, owners: Iterable[str] = ("",)) -> dict[str, Any] | None:
        """`rid`'s result, or where it is ("queued" | "running"); None if never issued for one
        of `owners`. An id older than the results' retention and without one reads `failed:
        expired`."""
        issued = self.issued_at(rid, owners)
        if issued is None:
            return None
        result = self.load_result(rid)
        if result is not None:
            callback = self.callback_state(rid)
            return result.as_dict() | ({"callback": _shown(callback)} if callback else {})
        if self.clock() - issued > result_ttl_s:
            return {"id": rid, "status": "failed", "error": "expired", "reason": "past the results' retention"}
        running = rid in self.cluster_status().get("running", ())
        return {"id": rid, "status": "running" if running else "queued"}

    def expire(self, *, input_ttl_s: float, result_ttl_s: float) -> int:
        """Retention on the embedded store (S3: the same rules as lifecycle rules): inputs
        after `input_ttl_s`, results and dedup entries after `result_ttl_s`. Enrolments, the
        gallery and the id key are kept."""
        now = self.clock()
        removed = self.blobs.expire("inputs/", now - input_ttl_s)
        for folder in ("results/", "dedup/", _CALLBACKS):
            removed += self.blobs.expire(folder, now - result_ttl_s)
        removed += self.blobs.expire(USAGE, now - USAGE_RETENTION_S)
        return removed

    def probe(self) -> None:
        """Raises unless the queue and the blob store can be written now (readiness)."""
        self.requests.writable()
        self.blobs.put(_PROBE, b"ok", durable=False)

    # -- heartbeats and cluster status -------------------------------------------------------

    def write_heartbeat(self, beat: Heartbeat) -> None:
        self.blobs.put(_HEARTBEATS + beat.worker + ".json", beat.to_json().encode(), durable=False)

    def heartbeats(self) -> dict[str, Heartbeat]:
        beats = {}
        for key in self.blobs.list(_HEARTBEATS):
            try:
                beat = Heartbeat.from_json(self.blobs.get(key))
            except (BlobNotFound, ValueError, TypeError):
                continue  # deleted meanwhile, or half a format change: the next tick sees it
            beats[beat.worker] = beat
        return beats

    def remove_heartbeat(self, worker: str) -> None:
        self.blobs.delete(_HEARTBEATS + worker + ".json")

    def publish_status(self, status: dict[str, Any]) -> None:
        self.blobs.put(_STATUS, json.dumps(status).encode(), durable=False)

    def cluster_status(self) -> dict[str, Any]:
        """The controller's last published view, re-read at most every `status_ttl_s`."""
        now = time.monotonic()
        with self._lock:
            if self._status is not None and now - self._status[0] < self.status_ttl_s:
                return self._status[1]
        try:
            status: dict[str, Any] = json.loads(self.blobs.get(_STATUS))
        except BlobNotFound:
            status = {"workers": [], "decisions": [], "policy": None, "at": None, "running": []}
        with self._lock:
            self._status = (now, status)
        return status

    # -- face gallery ------------------------------------------------------------------------

    def publish_gallery(self, data: bytes) -> None:
        """Store the base gallery (`--gallery`) for the workers; enrolments stay beside it."""
        self.blobs.put(_GALLERY, data)
        self._bump_gallery()

    def add_enrolment(self, rid: str, data: bytes) -> None:
        """One enrolled photo (a one-row gallery), kept under its request id: first write wins."""
        self.blobs.put(f"{_ENROLMENTS}{rid}.npz", data, if_absent=True)
        self._bump_gallery()

    def _bump_gallery(self) -> None:
        # Workers reload when the version changes; a lost race between two writers still
        # changes it, and a reload reads every part, whoever wrote the version.
        self.blobs.put(_GALLERY_VERSION, f"{time.time_ns()}-{secrets.token_hex(4)}".encode())
        self.gallery_changed()

    def gallery_changed(self) -> None:
        """Another process changed the gallery (a worker enrolled someone): read its version anew
        rather than answer from this process's cached one for up to a second."""
        self._version_cache = None

    def gallery_version(self) -> str:
        try:
            return self.blobs.get(_GALLERY_VERSION).decode()
        except BlobNotFound:
            return ""

    def remove_person(self, name: str) -> None:
        """Leave out every photo of `name` enrolled until now, the base gallery's included; a
        later enrolment of the same name counts again."""
        record = json.dumps({"name": name, "at": self.clock()}).encode()
        self.blobs.put(f"{_REMOVALS}{hashlib.sha256(name.encode()).hexdigest()[:32]}.json", record)
        self._bump_gallery()

    def load_gallery(self) -> GalleryParts:
        """The base gallery, then every enrolment in the order they were issued, and removals."""
        parts = []
        # No exists() first: a get of a missing base is the same one trip.
        for key in [_GALLERY, *self.blobs.list(_ENROLMENTS)]:
            try:
                data = self.blobs.get(key)
            except BlobNotFound:
                continue
            # an enrolment's key is its request id, whose first 4 bytes are its issue time
            parts.append((0.0 if key == _GALLERY else _stamp(key[len(_ENROLMENTS) :]), data))
        removed: dict[str, float] = {}
        for key in self.blobs.list(_REMOVALS):
            with contextlib.suppress(BlobNotFound, ValueError, KeyError):
                entry = json.loads(self.blobs.get(key))
                removed[str(entry["name"])] = float(entry["at"])
        return GalleryParts(parts, removed)
