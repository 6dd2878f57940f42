"""Intake and results: the whole life of a request between the web tier and the workers.

    inputs/<sha256>             the image bytes, content-addressed (many requests share one)
    results/<id>.json           the final Result: the first write wins, every reader sees it
    dedup/<model>/<sha256>.json the answer for the same bytes later

Web tier, worker and controller call these verbs and never format one of these keys or parse a
stored result themselves (dramatiq's results backend is the model: the lifecycle written once).
What must happen when a result becomes final (a webhook) plugs in through `on_final`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import replace
from typing import IO, Any

from ..blobs.base import BlobNotFound, BlobStore
from ..messages import MessageError, Request, Result
from ..queues.base import Queue
from ..queues.group import GroupSender
from ..replies import Replies
from .ids import RequestIds

log = logging.getLogger(__name__)

# (the request, the result that stands, whether this call made it final): webhooks plug in here
FinalHook = Callable[[Request, Result, bool], None]
_PROBE = "config/ready-probe"


RESULTS, DEDUP = "results/", "dedup/"  # small records, one of each per image


def _result_key(rid: str) -> str:
    return f"{RESULTS}{rid}.json"


def _no_version(model: str) -> str:
    return ""


def _nothing_more(req: Request, result: Result, made_final: bool) -> None:
    return None


def _nothing_shown(rid: str) -> dict[str, Any]:
    return {}


class Results:
    def __init__(
        self,
        *,
        requests: Queue,
        blobs: BlobStore,
        ids: RequestIds,
        clock: Callable[[], float] = time.time,
        on_final: FinalHook = _nothing_more,
        model_version: Callable[[str], str] = _no_version,
        durable_inputs: bool = False,
    ) -> None:
        """`model_version(model)`: the part of a model's identity that changes while it serves
        (the face gallery's version), so that a dedup answer is never one of another version.
        `durable_inputs`: an input is on disk before `put_input` returns (the `durability`
        setting's "power"; the queue's sends are made durable by the queue itself)."""
        self.requests, self.blobs, self.ids, self.clock = requests, blobs, ids, clock
        self.durable_inputs = durable_inputs
        self.on_final, self.model_version = on_final, model_version
        self._sender = GroupSender(requests)

    # -- intake (web tier) -------------------------------------------------------------------

    def put_input(self, data: bytes | IO[bytes], digest: str) -> None:
        """Store the image bytes (whose SHA-256 is `digest`) once, whoever sends them: with
        `durable_inputs`, fsynced; else, like a queue's commits that do not wait for the disk
        (SQLite synchronous=NORMAL), it survives any process crash, and a power cut may cost the
        last moments (a request that outlives its input is answered `failed: input_missing`)."""
        self.blobs.put(f"inputs/{digest}", data, if_absent=True, durable=self.durable_inputs)

    def request(self, draft: Request, digest: str) -> Request:
        """`draft` (every field the web knows) with its input key, model version and dedup key."""
        version = self.model_version(draft.model)
        dedup = _dedup_key(draft.model, version, digest) if draft.task == "recognize" else ""
        return replace(draft, input_key=f"inputs/{digest}", model_version=version, dedup=dedup)

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

    def probe(self) -> None:
        """Raises unless the queue and the blob store can be written now (readiness)."""
        self.requests.writable()
        self.blobs.put(_PROBE, b"ok", durable=False)

    # -- results -----------------------------------------------------------------------------

    def load_inputs(self, reqs: Sequence[Request]) -> list[bytes | None]:
        """Each request's image bytes (None: no longer stored), read in one call."""
        found = self.blobs.get_many([r.input_key for r in reqs])
        return [found.get(r.input_key) for r in reqs]

    def load_result(self, rid: str) -> Result | None:
        return self._load(_result_key(rid))

    def _load(self, key: str) -> Result | None:
        try:
            return self._parsed(key, self.blobs.get(key))
        except BlobNotFound:
            return None

    def _parsed(self, key: str, data: bytes | None) -> Result | None:
        try:
            return None if data is None else Result.from_json(data)
        except MessageError:
            log.error("unreadable result at %s: treated as absent", key)
            return None

    def publish_result(self, result: Result) -> Result:
        """Store the final result unless one exists; returns the one that stands."""
        return self._publish([result])[0][0]

    def finish(self, req: Request, result: Result) -> Result:
        """`req`'s final result: stored unless one exists (the one that stands is returned),
        then what follows a final result (its webhook) set going."""
        return self.finish_many([(req, result)])[0]

    def finish_many(self, done: Sequence[tuple[Request, Result]], durable: bool = True) -> list[Result]:
        """`finish` for a worker's batch, its results stored in one call. `durable=False`: not
        yet safe from a power cut until `flush`, which a worker calls after replying and
        before deleting the requests (a power cut in between: they come again)."""
        finals = self._publish([result for _, result in done], durable)
        for (req, _), (final, made) in zip(done, finals, strict=True):
            self.on_final(req, final, made)
        return [final for final, _ in finals]

    def flush(self, rids: Sequence[str]) -> None:
        """The results of `rids`, stored with `durable=False`, made safe from a power cut."""
        self.blobs.sync([_result_key(rid) for rid in dict.fromkeys(rids)])

    def _publish(self, results: Sequence[Result], durable: bool = True) -> list[tuple[Result, bool]]:
        """Each result stored unless one exists, in one call: the one that stands, and whether
        this call stored it (a request twice in a batch, a duplicated message: its first). A
        stored result that cannot be read (a power cut left it empty) is replaced."""
        mine: dict[str, bytes] = {}
        for result in results:
            mine.setdefault(_result_key(result.id), result.encoded.encode())
        written = self.blobs.put_many(mine, if_absent=True, durable=durable)
        found = self.blobs.get_many([k for k in mine if k not in written])
        theirs = {k: self._parsed(k, found.get(k)) for k in mine if k not in written}
        broken = {k: mine[k] for k, result in theirs.items() if result is None}
        if broken:
            # Only after a power cut (or a hand that emptied the file): the request is still
            # queued, so this redelivery is the one to answer it. Two redeliveries at once
            # would each replace it, both answers valid.
            written |= self.blobs.put_many(broken, durable=durable)
        standing: dict[str, Result] = {}
        out = []
        for result in results:
            key = _result_key(result.id)
            made = key in written and key not in standing
            final = result if made else standing.get(key) or theirs.get(key) or result
            standing.setdefault(key, final)
            out.append((final, made))
        return out

    def resume(self, req: Request, result: Result) -> None:
        """A redelivered request whose result stands: what finishing it sets going may not
        have been (the worker before died in between); the hook makes sure of it."""
        self.on_final(req, result, False)

    def remember(self, answers: Sequence[tuple[Request, Result]]) -> None:
        """The answers for the same bytes later (an optimisation: after the replies): each
        stored result under its dedup key as well, without a copy where the store can."""
        pairs = {req.dedup: _result_key(res.id) for req, res in answers if req.dedup and res.status == "done"}
        if pairs:
            self.blobs.link(pairs)

    def status(
        self,
        rid: str,
        result_ttl_s: float = math.inf,
        owners: Iterable[str] = ("",),
        running: Container[str] = (),
        also: Callable[[str], dict[str, Any]] = _nothing_shown,
    ) -> dict[str, Any] | None:
        """`rid`'s result (with what `also(rid)` adds to a stored one: its webhook's delivery),
        or where it is ("queued" | "running": among `running`, the ids in workers' hands); None
        if never issued for one of `owners`. An id older than the results' retention and
        without one reads `failed: expired`."""
        issued = self.ids.issued_at(rid, owners)
        if issued is None:
            return None
        result = self.load_result(rid)
        if result is not None:
            return result.as_dict() | also(rid)
        if self.clock() - issued > result_ttl_s:
            return {"id": rid, "status": "failed", "error": "expired", "reason": "past the results' retention"}
        return {"id": rid, "status": "running" if rid in running else "queued"}

    def expire(self, *, input_ttl_s: float, result_ttl_s: float) -> int:
        """Retention on the embedded store (S3: the same rules as lifecycle rules): inputs
        after `input_ttl_s`, results and dedup entries after `result_ttl_s`."""
        now = self.clock()
        removed = self.blobs.expire("inputs/", now - input_ttl_s)
        for folder in (RESULTS, DEDUP):
            removed += self.blobs.expire(folder, now - result_ttl_s)
        return removed


def _dedup_key(model: str, version: str, digest: str) -> str:
    return f"{DEDUP}{model}-{version}/{digest}.json" if version else f"{DEDUP}{model}/{digest}.json"


def reply(replies: Replies, to: str, result: Result) -> bool:
    """Hand `result` to the web process that waits (`to`: its inbox); False if none does any
    more. A hint that saves a wait, never the record: the result is stored first."""
    return bool(to) and replies.send(to, result.encoded)


def reply_many(replies: Replies, answers: Sequence[tuple[str, Result]]) -> list[bool]:
    """`reply` for a worker's batch, in one call where the channel has one; for each, whether
    it was handed over (or nobody waits): False, the caller keeps the request, whose
    redelivery replies again. If the one call fails, a call each finds which could not."""
    try:
        replies.send_many([(to, result.encoded) for to, result in answers if to])
        return [True] * len(answers)
    except Exception:
        log.warning("the replies of a batch failed: sending each", exc_info=True)
    return [_handed_over(replies, to, result) for to, result in answers]


def _handed_over(replies: Replies, to: str, result: Result) -> bool:
    try:
        reply(replies, to, result)
    except Exception:
        log.warning("reply to %s failed: the request will be answered again", to, exc_info=True)
        return False
    return True
