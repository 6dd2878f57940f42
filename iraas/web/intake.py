"""From uploaded bytes to queued requests: check cheaply, store content-addressed, enqueue.

Checks here read headers only (size, format by content, pixel count, a complete end of file);
the full decode happens once, in the worker. The same image with the same model is answered
from the stored result without inference (dedup by SHA-256).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..autoscale import wait_at_full_size
from ..config import Settings
from ..imaging import ImageError, inspect, looks_complete
from ..lifecycle.cluster import Cluster
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


STATUS_FRESH_S = 10.0  # an older status (its controller gone?) tells nothing of the wait now


class Intake:
    def __init__(self, settings: Settings, results: Results, reply_to: str, cluster: Cluster | None = None) -> None:
        """`cluster`: whose status tells how long the queue takes to drain (deadlines that cannot
        be met are answered at once); None: never answered early."""
        self.s, self.results, self.reply_to, self.cluster = settings, results, reply_to, cluster
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
        hopeless = self._hopeless(extras.deadline_s, now)
        for i, (item, rid) in enumerate(zip(items, ids, strict=True)):
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
            if cached is None and (why := hopeless(i)):
                cached = self.results.finish(req, _expired_early(req, why))
            out.append(Submitted(rid, item.name, cached))
            if cached is None:
                self.results.put_input(item.body.reader(), digest)
                queued.append(req)
        self.results.enqueue(queued)
        return out

    def _hopeless(self, deadline_s: float, now: float) -> Callable[[int], str]:
        """For the i-th item: why its deadline cannot be met even with every worker there may
        be ("" if it can, or if nothing is known: no status, an old one, no rate measured)."""
        if not deadline_s or self.cluster is None:
            return _never
        status = self.cluster.status()
        if status.at is None or now - status.at > STATUS_FRESH_S:
            return _never
        backlog, most = int(status.load.get("backlog") or 0), status.load.get("max_workers")

        def why(i: int) -> str:
            least = wait_at_full_size(status.load, backlog + i)
            if least is None or least <= deadline_s:
                return ""
            return (
                f"cannot be recognised within its deadline of {deadline_s:g} s: with {backlog + i} request(s) "
                f"ahead it would wait {least:.1f} s or more, with all {most} workers at their measured rate"
            )

        return why


def _never(i: int) -> str:
    return ""


def _expired_early(req: Request, reason: str) -> Result:
    return Result.failure(req, "expired", reason, timings={"queued": 0.0, "total": 0.0})
