"""The app tier: take a batch of requests, classify it, store and send the results.

Order matters for at-least-once delivery: results are written (first write wins), replies
handed over, then the results made durable (fsync), and only then the messages deleted, so a
worker dying anywhere, or the machine losing power, loses nothing — the messages come back after
the visibility timeout, and a redelivered request whose result exists is answered (and replied
to) from it without inference; one a power cut left unreadable is answered anew. Only a
redelivery can find a result: a first delivery goes straight to inference.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from ..blobs.base import BlobError
from ..imaging import ImageError
from ..lifecycle.cluster import Cluster
from ..lifecycle.results import Results, reply_many
from ..logs import about
from ..messages import Heartbeat, MessageError, Request, Result
from ..model.classifier import Prediction
from ..model.recognizer import Recognizer
from ..model.spec import SpecError
from ..queues.base import Message, Queue, QueueError
from ..replies import Replies
from . import answers
from .enrol import Enrolments, enrol
from .meter import Meter

log = logging.getLogger("iraas.worker")  # the name log queries know (before the package split)


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker takes from the settings (the composition root derives it)."""

    batch_size: int = 4
    batch_wait_s: float = 0.0  # extra wait for a fuller batch once one request arrived
    visibility_s: int = 10
    heartbeat_s: float = 1.0
    threads: int = 1  # the model's threads: the cores its CPU use is a fraction of


class Protection(Protocol):
    """Keeps a scaler from ending this worker while it works (fleet/asg.py)."""

    def working(self) -> None: ...
    def idle(self) -> None: ...


@dataclass
class _Job:
    msg: Message
    req: Request
    data: bytes | None = None
    result: Result | None = None
    version: str | None = None  # the model version that answered it (the face gallery's)
    fetch_s: float = 0.0
    store_s: float | None = None  # writing its result, when this worker wrote it in this batch


class Worker:
    def __init__(
        self,
        *,
        requests: Queue,
        results: Results,
        cluster: Cluster,
        replies: Replies,
        recognizer: Recognizer,
        config: WorkerConfig,
        enrolments: Enrolments | None = None,
        protection: Protection | None = None,
        worker_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`enrolments`: where a faces worker adds the photos it enrols (the gallery store);
        `protection`: told before each batch and on each idle heartbeat (an Auto Scaling group)."""
        self.requests, self.results, self.cluster, self.replies = requests, results, cluster, replies
        self.recognizer, self.config, self.enrolments = recognizer, config, enrolments
        self.protection = protection
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.clock = clock
        self.started_at = clock()
        self.processed = self.failed = 0
        self.state = "starting"
        self.current: list[str] = []
        self.error = ""  # a configuration error, reported in heartbeats until work succeeds
        self._stop = threading.Event()
        self._closed = threading.Event()  # the loop has ended (a stop still finishes its batch)
        self._held: list[str] = []  # receipts of the batch in hand, kept hidden while it runs
        self._received_at = 0.0  # of the batch in hand
        self._backoff_s = 1.0  # after a refused permission: doubled each time, up to a minute
        self.meter = Meter(config.threads)

    # -- the loop ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the batch in hand, take no new one (SIGTERM)."""
        self._stop.set()

    def run(self, burst: bool = False, max_idle_s: float = 0.0) -> None:
        """Until stopped; `burst`: until the queue is empty; `max_idle_s`: until idle that long."""
        # The first beat before the first receive: a worker holding messages is a known worker
        # (for the controller, and for anyone looking for the process that holds them).
        self._write_beat()
        beat = threading.Thread(target=self._beat_loop, daemon=True, name="heartbeat")
        beat.start()
        # One thread for the worker's life, not one per batch (a thread start costs ~0.1 ms).
        threading.Thread(target=self._extend_loop, daemon=True, name="visibility").start()
        idle_since = time.monotonic()
        try:
            while not self._stop.is_set():
                handled = self._attempt()
                if handled is None:
                    continue
                if handled:
                    idle_since = time.monotonic()
                elif burst or (max_idle_s and time.monotonic() - idle_since >= max_idle_s):
                    log.info("worker %s: idle, exiting", self.id)
                    break
        finally:
            self._close(beat)

    def _attempt(self) -> int | None:
        """One batch: how many requests it handled (0 when it cannot work: idle as far as
        `max_idle_s` goes, so an instance that cannot work ends); None after a storage outage."""
        try:
            handled = self.run_once(wait_s=1.0)
        except PermissionError as exc:
            # A permission the role lacks: retrying fast fixes nothing and a restart loop even
            # less. Say so (log, heartbeat for /v1/cluster), back off to a minute.
            if str(exc) != self.error:
                log.error("worker %s: %s", self.id, exc)
            self.error, self._backoff_s = str(exc)[:300], min(self._backoff_s * 2, 60.0)
            self._write_beat()
            self._stop.wait(self._backoff_s)
            return 0
        except (QueueError, BlobError) as exc:
            # Storage locked or unreachable for a while: what is in hand comes back after the
            # visibility timeout; try again shortly rather than die and be replaced.
            log.warning("worker %s: storage unavailable (%s); retrying in 1 s", self.id, exc)
            self._stop.wait(1.0)
            return None
        self.error, self._backoff_s = "", 1.0
        return handled

    def _close(self, beat: threading.Thread) -> None:
        self.state = "stopping"
        self._stop.set()
        self._closed.set()
        beat.join(timeout=5)
        try:
            self.cluster.remove_heartbeat(self.id)
        except BlobError as exc:  # the controller removes stale ones
            log.warning("worker %s: could not remove its heartbeat: %s", self.id, exc)

    def run_once(self, wait_s: float = 0.0) -> int:
        """Handle at most one batch; returns how many requests it handled."""
        self.state = "idle"
        if self._stop.is_set():  # stopping: take nothing new
            return 0
        queue, vis = self.requests, self.config.visibility_s
        msgs = queue.receive(self.config.batch_size, wait_s=wait_s, visibility_s=vis)
        if msgs and len(msgs) < self.config.batch_size and self.config.batch_wait_s > 0 and not self._stop.is_set():
            time.sleep(self.config.batch_wait_s)
            msgs += queue.receive(self.config.batch_size - len(msgs), 0, vis)
        if not msgs:
            return 0
        if self._stop.is_set():  # stopped during the long poll: give back what we have not started
            queue.release([m.receipt for m in msgs])
            return 0
        fresh, suspect = self._suspect_last(msgs)
        received_at = self.clock()
        if fresh:
            self._handle(fresh, received_at, still=suspect)
        if suspect:
            self._handle(suspect, received_at, still=[])
        self.state = "idle"
        return len(fresh) + len(suspect)

    def _suspect_last(self, msgs: list[Message]) -> tuple[list[Message], list[Message]]:
        """A redelivered message may be the one that killed a worker (a native crash, out of
        memory): the batch's first-time messages are answered (and deleted) first, then one
        redelivered message runs alone; any other redelivered one goes back. So a poison image
        fails by itself within `max_receives` tries, and no batch-mate is handed back for it
        (SQS would count that against its tries: a release keeps the receive count there)."""
        fresh = [m for m in msgs if m.receive_count <= 1]
        again = [m for m in msgs if m.receive_count > 1]
        if len(again) > 1:
            self.requests.release([m.receipt for m in again[1:]])
        return fresh, again[:1]

    def _handle(self, msgs: list[Message], received_at: float, still: list[Message]) -> None:
        """One group: infer, store, reply, delete. `still`: messages held for after it (kept
        hidden meanwhile, like the group's own)."""
        jobs = self._parse(msgs)
        self._received_at = received_at
        if self.protection is not None:
            self.protection.working()
        # Heartbeats report this state on their own period: a beat forced per batch would cost
        # two writes an image under light load, for a "running" that lasts ~15 ms.
        self.state, self.current = "busy", [j.req.id for j in jobs]
        self._held = [m.receipt for m in msgs + still]
        t0 = time.monotonic()
        try:
            borrowed = self._process(jobs)
        finally:
            self._held, self.current = [m.receipt for m in still], []
        kept = self._reply_all(jobs)
        # The results were stored without waiting for the disk, so that the replies need not:
        # made durable now, before any request is deleted (a power cut in between: it comes again).
        self.results.flush([j.req.id for j in jobs])
        done = [m.receipt for m in msgs if m.receipt not in kept]
        if done:
            self.requests.delete_batch(done)
        if not borrowed:  # idle cores lent to an image: faster than under load, which is what sizing needs
            self.meter.worked(len(jobs), time.monotonic() - t0)
        # After the replies and the delete (an optimisation, off the client's way), in this
        # thread: a hand-over to another costs CPU the model could use, for a write not fsynced.
        self._remember(jobs)

    def _parse(self, msgs: list[Message]) -> list[_Job]:
        jobs = []
        for m in msgs:
            try:
                jobs.append(_Job(m, Request.from_json(m.body)))
            except (MessageError, TypeError) as exc:
                # Nobody can be answered for a message we cannot read; keeping it would only
                # send it round to the dead-letter queue.
                log.error("dropping unreadable request %s: %s", m.id, exc)
        return jobs

    # -- one batch --------------------------------------------------------------------------

    def _process(self, jobs: list[_Job]) -> int:
        """Each job's result, stored; how many images ran on idle cores lent to them."""
        todo = []
        for job in jobs:
            if job.msg.receive_count > 1:  # a redelivery: another worker may have finished it
                job.result = self.results.load_result(job.req.id)
                if job.result is not None:
                    self.results.resume(job.req, job.result)
            if job.result is None:
                todo.append(job)
        for job in todo:  # never inferred past its deadline: the client said it is of no use then
            if job.req.deadline and self._received_at > job.req.deadline:
                job.result = answers.expired(job.req, self._received_at, self.id)
        live = [j for j in todo if j.result is None]
        self._fetch(live)
        for job in live:
            if job.req.task == "enroll" and job.data is not None:
                total_s = self.clock() - job.req.submitted_at
                job.result = enrol(job.req, job.data, self.recognizer, self.enrolments, self.id, total_s)
        runnable = [j for j in live if j.data is not None and j.result is None]
        if any(j.req.model_version not in ("", self.recognizer.version) for j in runnable):
            # the web asked about a gallery this worker has not read yet (it checks once a
            # second): read it now, or the answer would come from the one before
            self.recognizer.refresh()
        before = replace(self.recognizer.times)
        outcomes = self._classify([j.data or b"" for j in runnable]) if runnable else []
        spent = answers.per_image(before, self.recognizer.times, len(runnable))
        version = self.recognizer.version  # now: by the time the dedup entry is written, it may be newer
        for job, outcome in zip(runnable, outcomes, strict=True):
            job.result, job.version = self._result(job, outcome, spent, len(runnable)), version
        for job in live:
            if job.result is None:
                gone = "the uploaded image is no longer stored"
                job.result = Result.failure(job.req, "input_missing", gone, timings={}, worker=self.id)
        self._store(todo)
        return self.recognizer.times.borrowed - before.borrowed

    def _classify(self, images: list[bytes]) -> list[Prediction | ImageError]:
        """The recognizer's answers; if it raises for the batch, each image alone, so that the
        exception is the failure of the image that caused it and of no other. (Decoding and
        preprocessing errors are the recognizer's `corrupt` answers; an exception that escapes
        it comes from the model, and is `recognition_failed`: it may not be the image's fault.)"""
        try:
            return self.recognizer.classify(images)
        except SpecError:
            raise  # the deployment's problem (no gallery), not an image's
        except Exception as exc:
            if len(images) > 1:
                return [out for image in images for out in self._classify([image])]
            log.warning("recognising an image failed", exc_info=True)
            return [ImageError.unexpected("the model failed on this image", exc, "recognition_failed")]

    def _fetch(self, jobs: list[_Job]) -> None:
        """The batch's images, in one call (one statement on PostgreSQL)."""
        t0 = time.perf_counter()
        inputs = self.results.load_inputs([j.req for j in jobs])
        spent = time.perf_counter() - t0
        for job, data in zip(jobs, inputs, strict=True):
            job.data, job.fetch_s = data, spent

    def _result(self, job: _Job, outcome: Prediction | ImageError, spent: dict[str, float], batch: int) -> Result:
        req, now = job.req, self.clock()
        timings = {
            "queued": round(max(self._received_at - req.submitted_at, 0.0), 4),
            "fetch": round(job.fetch_s, 4),
            "decode": round(spent["decode"], 4),
            "inference": round(spent["inference"], 4),
            "total": round(now - req.submitted_at, 4),
            "batch": batch,
            "attempt": job.msg.receive_count,  # above 1: redelivered (a worker died or stalled)
        }
        return answers.recognised(req, outcome, timings, self.id)

    def _store(self, jobs: list[_Job]) -> None:
        """The batch's results, in one call (one statement on PostgreSQL); a job whose request
        someone else finished first gets their result."""
        mine = [(j.req, j.result) for j in jobs if j.result is not None]
        assert len(mine) == len(jobs), "every job to store has its result"
        t0 = time.perf_counter()
        finals = self.results.finish_many(mine, durable=False)  # flushed after the replies
        spent = time.perf_counter() - t0
        for job, (_, own), final in zip(jobs, mine, finals, strict=True):
            job.result = final
            if final is own:
                job.store_s = spent
                if own.status == "done":
                    self.processed += 1
                else:
                    self.failed += 1
                log.info(
                    "request %s (%s): %s", job.req.id, job.req.name, answers.outcome_line(own), extra=about(job.req)
                )

    def _remember(self, jobs: list[_Job]) -> None:
        """Dedup entries for the same bytes later; after the replies, being only an optimisation.
        Only for the model version the web asked about: a worker still on the previous gallery
        must not store its answer as the answer for the new one."""
        mine = [
            (j.req, j.result)
            for j in jobs
            if j.result is not None and j.result.worker == self.id and j.req.model_version == j.version
        ]
        try:
            self.results.remember(mine)
        except BlobError as exc:  # the answers stand; the same bytes later are only inferred again
            log.warning("worker %s: dedup entries not written (%s)", self.id, exc)

    def _reply_all(self, jobs: list[_Job]) -> set[str]:
        """The receipts of the jobs whose reply could not be handed over: their messages are
        kept, so that a redelivery replies from the stored result."""
        answered = [j for j in jobs if j.result is not None]
        handed = reply_many(self.replies, [(j.req.reply_to, self._replied(j)) for j in answered])
        return {j.msg.receipt for j, ok in zip(answered, handed, strict=True) if not ok}

    def _replied(self, job: _Job) -> Result:
        assert job.result is not None
        if job.store_s is None:
            return job.result
        # the stored result cannot hold the time it took to store it: the reply (metrics) does
        return replace(job.result, timings=job.result.timings | {"store": round(job.store_s, 4)})

    # -- heartbeats -------------------------------------------------------------------------

    def _write_beat(self) -> None:
        cpu, rate = self.meter.read()
        beat = Heartbeat(
            worker=self.id,
            pid=os.getpid(),
            state=self.state,
            at=self.clock(),
            started_at=self.started_at,
            processed=self.processed,
            failed=self.failed,
            current=list(self.current),
            error=self.error,
            cpu=cpu,
            rate=rate,
        )
        try:
            self.cluster.write_heartbeat(beat)
        except BlobError:
            log.warning("heartbeat write failed", exc_info=True)

    def _extend_loop(self) -> None:
        """Keeps the batch in hand hidden however long inference takes: every third of the
        visibility timeout, its messages get a full timeout again."""
        vis = self.config.visibility_s
        while not self._closed.wait(max(vis / 3, 0.5)):
            for receipt in self._held:
                self.requests.change_visibility(receipt, vis)

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.config.heartbeat_s):
            self._write_beat()
            if self.protection is not None and self.state != "busy":
                self.protection.idle()
