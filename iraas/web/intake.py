"""From uploaded bytes to queued requests: check cheaply, store content-addressed, enqueue.

Checks here read headers only (size, format by content, pixel count, a complete end of file);
the full decode happens once, in the worker. The same image with the same model is answered
from the stored result without inference (dedup by SHA-256).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..config import Settings
from ..imaging import ImageError, inspect, looks_complete
from ..lifecycle.results import Results
from ..messages import Request, Result
from ..refusals import InputError
from .upload import Spool


def model_key(model: str) -> str:
    """The model's name in keys and messages: a built-in name, or a spec file's stem."""
    return Path(model).stem if model.endswith((".toml", ".json")) else model


@dataclass(frozen=True)
class Item:
    name: str
    body: Spool


@dataclass(frozen=True)
class Submitted:
    id: str
    name: str
    cached: Result | None  # answered from a stored result: nothing was queued


def check(item: Item, settings: Settings) -> None:
    body = item.body
    if body.size > settings.max_file_bytes:
        raise InputError(413, "too_large", f"file is over the {settings.max_file_bytes} byte limit", item.name)
    try:
        info = inspect(body.reader(), settings.image_limits)
    except ImageError as err:
        raise InputError.from_image(err, item.name) from None
    if not looks_complete(body.head(16), body.tail(4096), body.size, info.format):
        raise InputError(422, "truncated", "the image file is truncated", item.name)


@dataclass(frozen=True)
class Extras:
    """What a request may carry besides its images (docs/integrating.md)."""

    trace: str = ""  # X-Request-ID
    traceparent: str = ""
    deadline_s: float = 0.0  # 0: none
    callback: str = ""


class Intake:
    def __init__(self, settings: Settings, results: Results, reply_to: str) -> None:
        self.s, self.results, self.reply_to = settings, results, reply_to
        self.model = model_key(settings.model)

    def submit(
        self,
        items: list[Item],
        ids: list[str],
        task: str = "recognize",
        person: str = "",
        extras: Extras = Extras(),
    ) -> list[Submitted]:
        """Store the inputs of `items` and enqueue them under `ids` (blocking I/O: call from a
        thread). Same bytes and model as an earlier recognition: answered from its result.
        Every answer is replied to this web process, waited for or not (its metrics count it)."""
        now = time.time()
        out: list[Submitted] = []
        queued = []
        for item, rid in zip(items, ids, strict=True):
            digest = item.body.digest
            draft = Request(
                id=rid,
                input_key="",
                name=item.name,
                model=self.model,
                reply_to=self.reply_to,
                submitted_at=now,
                task=task,
                person=person,
                trace=extras.trace,
                traceparent=extras.traceparent,
                deadline=now + extras.deadline_s if extras.deadline_s else 0.0,
                callback=extras.callback,
            )
            req = self.results.request(draft, digest)
            cached = self.results.answer_from_cache(req) if task == "recognize" else None
            out.append(Submitted(rid, item.name, cached))
            if cached is None:
                self.results.put_input(item.body.reader(), digest)
                queued.append(req)
        self.results.enqueue(queued)
        return out
