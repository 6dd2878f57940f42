"""From uploaded bytes to queued requests: check cheaply, store content-addressed, enqueue.

Checks here read headers only (size, format by content, pixel count, a complete end of file);
the full decode happens once, in the worker. The same image with the same model is answered
from the stored result without inference (dedup by SHA-256).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..backends import Backends
from ..blobs.base import BlobNotFound
from ..config import Settings
from ..imaging import ImageError, inspect, looks_complete
from ..messages import (
    FACES,
    GALLERY_VERSION_KEY,
    MessageError,
    Request,
    Result,
    dedup_key,
    input_key,
    request_key,
    result_key,
)
from .errors import InputError


def model_key(model: str) -> str:
    """The model's name in keys and messages: a built-in name, or a spec file's stem."""
    return Path(model).stem if model.endswith((".toml", ".json")) else model


@dataclass(frozen=True)
class Item:
    name: str
    data: bytes


@dataclass(frozen=True)
class Submitted:
    id: str
    name: str
    cached: Result | None  # answered from a stored result: nothing was queued


def check(item: Item, settings: Settings) -> None:
    if len(item.data) > settings.max_file_bytes:
        raise InputError(413, "too_large", f"file is over the {settings.max_file_bytes} byte limit", item.name)
    try:
        info = inspect(item.data, settings.max_pixels)
    except ImageError as err:
        raise InputError.from_image(err, item.name) from None
    if not looks_complete(item.data, info.format):
        raise InputError(422, "truncated", "the image file is truncated", item.name)


class Intake:
    def __init__(self, settings: Settings, backends: Backends, reply_to: str) -> None:
        self.s, self.b, self.reply_to = settings, backends, reply_to
        self.model = model_key(settings.model)
        self._gallery_version, self._version_at = "", -1e9

    def new_ids(self, n: int) -> list[str]:
        return [uuid.uuid4().hex for _ in range(n)]

    def submit(self, items: list[Item], ids: list[str], reply: bool = True) -> list[Submitted]:
        """Store and enqueue `items` under `ids` (blocking I/O: call from a thread)."""
        now = time.time()
        out: list[Submitted] = []
        bodies: list[str] = []
        for item, rid in zip(items, ids, strict=True):
            digest = hashlib.sha256(item.data).hexdigest()
            dedup = dedup_key(self._dedup_model(), digest)
            cached = self._cached(rid, item.name, dedup, now)
            if cached is not None:
                out.append(Submitted(rid, item.name, cached))
                continue
            self.b.blobs.put(input_key(digest), item.data, if_absent=True)
            req = Request(
                rid,
                input_key(digest),
                item.name,
                self.model,
                self.reply_to if reply else "",
                now,
                dedup,
                self._gallery_version if self.model == FACES else "",
            )
            self.b.blobs.put(request_key(rid), req.to_json().encode())
            bodies.append(req.to_json())
            out.append(Submitted(rid, item.name, None))
        for i in range(0, len(bodies), 10):
            self.b.requests.send_batch(bodies[i : i + 10])
        return out

    def _dedup_model(self) -> str:
        """The same bytes get the same answer only from the same model: for faces that includes
        the gallery's version, which changes whenever someone is enrolled."""
        if self.model != FACES:
            return self.model
        return f"{self.model}-{self._current_gallery_version()}"

    def _current_gallery_version(self) -> str:
        now = time.monotonic()
        if now - self._version_at > 1.0:
            try:
                self._gallery_version = self.b.blobs.get(GALLERY_VERSION_KEY).decode()
            except BlobNotFound:
                self._gallery_version = "none"
            self._version_at = now
        return self._gallery_version

    def _cached(self, rid: str, name: str, key: str, now: float) -> Result | None:
        try:
            prior = Result.from_json(self.b.blobs.get(key))
        except (BlobNotFound, MessageError):
            return None
        result = Result(
            rid,
            name,
            prior.status,
            prior.model,
            prior.label,
            prior.confidence,
            prior.top5,
            timings={"queued": 0.0, "inference": 0.0, "total": round(time.time() - now, 4)},
            worker=None,
            cached=True,
        )
        self.b.blobs.put(result_key(rid), result.to_json().encode(), if_absent=True)
        return result
