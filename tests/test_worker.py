"""The worker loop in process, on the real embedded queue, blob store and reply sockets."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from iraas.blobs.base import BlobError
from iraas.config import Settings
from iraas.messages import Request, Result
from iraas.model.builtin import resolve_model
from iraas.model.classifier import Classifier
from iraas.parts import Parts, assemble, build, make_worker
from iraas.replies import Inbox
from iraas.worker import Worker

from .conftest import IMAGENET
from .drafts import make_request
from .images import crashing_avif

TENCH = (IMAGENET / "images" / "n01440764_tench.JPEG").read_bytes()
SHARK = (IMAGENET / "images" / "n01484850_great_white_shark.JPEG").read_bytes()
MODEL = "efficientnet-lite0"


@pytest.fixture
def store(tmp_path: Path) -> Parts:
    return build(Settings(data_dir=tmp_path, heartbeat_s=0.2))


@pytest.fixture
def inbox(store: Parts) -> Iterator[Inbox]:
    box = store.replies.inbox("t")
    yield box
    box.close()


def _submit(store: Parts, data: bytes, reply_to: str = "t") -> str:
    (rid,) = store.ids.new_ids(1)
    digest = hashlib.sha256(data).hexdigest()
    store.results.put_input(data, digest)
    req = make_request(
        store, rid=rid, digest=digest, name=f"{rid}.jpg", model=MODEL, reply_to=reply_to, submitted_at=time.time()
    )
    store.results.enqueue([req])
    return rid


def _worker(store: Parts, clf: Any, tmp_path: Path) -> Worker:
    return make_worker(store, clf, Settings(data_dir=tmp_path, heartbeat_s=0.2, visibility_s=5), "w-test")


def test_classifies_stores_replies_and_deletes(
    store: Parts, inbox: Inbox, classifier: Classifier, tmp_path: Path
) -> None:
    rid = _submit(store, TENCH)
    assert _worker(store, classifier, tmp_path).run_once(wait_s=1) == 1
    stored = store.results.load_result(rid)
    assert stored is not None and (stored.status, stored.label, stored.worker) == ("done", "tench", "w-test")
    (reply,) = inbox.receive(1)
    replied = Result.from_json(reply)
    # the reply is the stored result, with the time its storing took (for the stage metrics)
    assert set(replied.timings) == {"queued", "fetch", "decode", "inference", "store", "total", "batch", "attempt"}
    assert replace(replied, timings={k: v for k, v in replied.timings.items() if k != "store"}) == stored
    assert store.requests.depth().backlog == 0
    (rid2,) = store.ids.new_ids(1)
    digest = hashlib.sha256(TENCH).hexdigest()
    cached = store.results.answer_from_cache(_again(store, rid2, digest))
    assert cached is not None and (cached.label, cached.cached) == ("tench", True)


def test_a_request_whose_image_is_gone_is_answered_input_missing(
    store: Parts, inbox: Inbox, classifier: Classifier, tmp_path: Path
) -> None:
    rid = _submit(store, SHARK)
    store.blobs.delete(f"inputs/{hashlib.sha256(SHARK).hexdigest()}")  # expired before a worker took it
    assert _worker(store, classifier, tmp_path).run_once(wait_s=1) == 1
    stored = store.results.load_result(rid)
    assert stored is not None and (stored.status, stored.error, stored.worker) == ("failed", "input_missing", "w-test")
    (reply,) = inbox.receive(1)
    assert Result.from_json(reply).error == "input_missing"  # the waiting client is answered, not left waiting
    assert store.requests.depth().backlog == 0


def test_redelivered_request_is_answered_from_the_stored_result(
    store: Parts, inbox: Inbox, classifier: Classifier, tmp_path: Path
) -> None:
    rid = _submit(store, TENCH)
    assert store.requests.receive(1, visibility_s=1)  # a first worker took it and died...
    first = Result(id=rid, name="b.jpg", status="done", model=MODEL, label="goldfish", confidence=0.5)
    store.results.publish_result(first)  # ...after storing its result, before replying
    time.sleep(1.1)
    before = classifier.times.images
    assert _worker(store, classifier, tmp_path).run_once(wait_s=1) == 1
    assert classifier.times.images == before  # no inference
    assert store.results.load_result(rid) == first  # unchanged
    (reply,) = inbox.receive(1)
    assert Result.from_json(reply).label == "goldfish"


class _CountingBlobs:
    def __init__(self, inner: Any) -> None:
        self.inner, self.gets = inner, []

    def get(self, key: str) -> bytes:
        self.gets.append(key)
        return bytes(self.inner.get(key))

    def get_many(self, keys: list[str]) -> dict[str, bytes]:
        self.gets.extend(keys)
        return dict(self.inner.get_many(keys))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_first_delivery_reads_its_input_and_no_result(store: Parts, classifier: Classifier, tmp_path: Path) -> None:
    _submit(store, TENCH, reply_to="")
    counting = _CountingBlobs(store.blobs)
    counted = assemble(requests=store.requests, blobs=counting, replies=store.replies)  # type: ignore[arg-type]
    assert _worker(counted, classifier, tmp_path).run_once(wait_s=1) == 1
    assert [k.split("/")[0] for k in counting.gets] == ["inputs"]


def test_a_reply_that_cannot_be_handed_over_keeps_the_message(
    store: Parts, classifier: Classifier, tmp_path: Path
) -> None:
    rid = _submit(store, TENCH)

    def refuse(to: str, body: str) -> bool:
        raise OSError("buffer full")

    store.replies.send = refuse  # type: ignore[method-assign]
    assert _worker(store, classifier, tmp_path).run_once(wait_s=1) == 1
    assert store.results.load_result(rid) is not None
    assert store.requests.depth().in_flight == 1  # comes back, and its redelivery replies


def test_bad_image_is_a_final_failed_result_not_a_retry(store: Parts, classifier: Classifier, tmp_path: Path) -> None:
    rid = _submit(store, TENCH[:2000])
    _worker(store, classifier, tmp_path).run_once(wait_s=1)
    result = store.results.load_result(rid)
    assert result is not None and (result.status, result.error) == ("failed", "truncated")
    assert store.requests.depth().backlog == 0  # deleted, not left to come back


def test_a_stopped_worker_takes_nothing(store: Parts, classifier: Classifier, tmp_path: Path) -> None:
    _submit(store, TENCH)
    w = _worker(store, classifier, tmp_path)
    w.stop()
    assert w.run_once(wait_s=1) == 0
    (msg,) = store.requests.receive(1)
    assert msg.receive_count == 1  # never received by the stopped worker


def test_a_hand_back_while_stopping_costs_no_try(store: Parts, classifier: Classifier, tmp_path: Path) -> None:
    import threading

    w = _worker(store, classifier, tmp_path)
    polling = threading.Thread(target=w.run_once, kwargs={"wait_s": 5})
    polling.start()
    time.sleep(0.3)
    w.stop()  # stop arrives during the long poll; then a request does
    _submit(store, TENCH)
    polling.join()
    depth = store.requests.depth()
    assert (depth.visible, depth.in_flight) == (1, 0)  # back at once, not after the visibility timeout
    (msg,) = store.requests.receive(1)
    assert msg.receive_count == 1  # the hand-back was not counted against max_receives


def test_a_crashing_image_fails_alone(store: Parts, classifier: Classifier, tmp_path: Path) -> None:
    poison = crashing_avif(TENCH)
    ids = [_submit(store, TENCH), _submit(store, poison), _submit(store, SHARK)]
    assert _worker(store, classifier, tmp_path).run_once(wait_s=1) == 3
    results = [store.results.load_result(rid) for rid in ids]
    assert [(r.status, r.label or r.error) for r in results if r] == [
        ("done", "tench"),
        ("failed", "corrupt"),
        ("done", "great white shark"),
    ]
    assert store.requests.depth().backlog == 0


class _RaisesOn:
    """The real classifier, except that a batch holding `bad` raises (a recognizer bug that one
    input triggers, outside any per-image handling)."""

    def __init__(self, inner: Classifier, bad: bytes) -> None:
        self.inner, self.bad, self.spec, self.times, self.name, self.version = (
            inner,
            bad,
            inner.spec,
            inner.times,
            "x",
            "",
        )

    def classify(self, images: Any, top_k: int = 5) -> Any:
        if self.bad in images:
            raise RuntimeError("boom")
        return self.inner.classify(images, top_k)


def test_an_exception_for_the_batch_fails_only_the_image_that_raised(
    store: Parts, classifier: Classifier, tmp_path: Path
) -> None:
    bad = TENCH[:-10] + b"\xff\xd9" * 5
    ids = [_submit(store, TENCH), _submit(store, bad), _submit(store, SHARK)]
    assert _worker(store, _RaisesOn(classifier, bad), tmp_path).run_once(wait_s=1) == 3
    results = [store.results.load_result(rid) for rid in ids]
    assert [(r.status, r.label or r.error) for r in results if r] == [
        ("done", "tench"),
        ("failed", "recognition_failed"),
        ("done", "great white shark"),
    ]


def test_redelivered_requests_run_one_at_a_time(store: Parts, classifier: Classifier, tmp_path: Path) -> None:
    ids = [_submit(store, TENCH), _submit(store, SHARK), _submit(store, TENCH[:5000])]
    assert len(store.requests.receive(3, visibility_s=1)) == 3  # a worker took them and died
    time.sleep(1.1)
    w = _worker(store, classifier, tmp_path)
    handled = [w.run_once(wait_s=1) for _ in range(3)]
    assert handled == [1, 1, 1]  # each redelivery alone: a poison image cannot take others down
    results = [store.results.load_result(rid) for rid in ids]
    assert [(r.status, r.timings["batch"] if r.status == "done" else r.error) for r in results if r] == [
        ("done", 1),
        ("done", 1),
        ("failed", "truncated"),
    ]
    assert store.requests.depth().backlog == 0


class _Watching(_RaisesOn):
    """The real classifier, noting for each batch its size and which of `ids` had a result."""

    def __init__(self, inner: Classifier, store: Parts) -> None:
        super().__init__(inner, b"")
        self.store = store
        self.ids: list[str] = []
        self.seen: list[tuple[int, list[bool]]] = []

    def classify(self, images: Any, top_k: int = 5) -> Any:
        self.seen.append((len(images), [self.store.results.load_result(i) is not None for i in self.ids]))
        return self.inner.classify(images, top_k)


def test_first_time_batch_mates_are_answered_before_a_redelivered_message_runs(
    store: Parts, classifier: Classifier, tmp_path: Path
) -> None:
    suspect = _submit(store, TENCH[:5000])
    assert len(store.requests.receive(1, visibility_s=1)) == 1  # a worker took it and died
    time.sleep(1.1)
    watching = _Watching(classifier, store)
    watching.ids = [_submit(store, TENCH), _submit(store, SHARK)]
    assert _worker(store, watching, tmp_path).run_once(wait_s=1) == 3
    # the two first-time requests as a batch, answered; only then the redelivered one, alone:
    # had it killed the worker, it could not have taken them along
    assert watching.seen == [(2, [False, False]), (1, [True, True])]
    mates = [store.results.load_result(i) for i in watching.ids]
    assert [(r.label, r.timings["batch"], r.timings["attempt"]) for r in mates if r] == [
        ("tench", 2, 1),
        ("great white shark", 2, 1),
    ]  # neither handed back for the suspect's sake (SQS would count it against their tries)
    last = store.results.load_result(suspect)
    assert last is not None and (last.error, last.timings["attempt"]) == ("truncated", 2)
    assert store.requests.depth().backlog == 0


def test_exits_by_itself_after_max_idle(store: Parts, classifier: Classifier, tmp_path: Path) -> None:
    w = _worker(store, classifier, tmp_path)
    start = time.monotonic()
    w.run(max_idle_s=1.0)
    assert 1.0 <= time.monotonic() - start < 10
    assert store.cluster.heartbeats() == {}  # it says goodbye


class _Slow:
    """The real classifier, taking 2.5 s a batch (a big model on a slow machine)."""

    def __init__(self, inner: Classifier) -> None:
        self.inner, self.spec, self.times, self.name, self.version = inner, inner.spec, inner.times, "slow", ""

    def classify(self, images: Any, top_k: int = 5) -> Any:
        time.sleep(2.5)
        return self.inner.classify(images, top_k)


def test_a_batch_longer_than_the_visibility_timeout_stays_hidden(
    store: Parts, classifier: Classifier, tmp_path: Path
) -> None:
    import threading

    rid = _submit(store, TENCH, reply_to="")
    w = make_worker(store, _Slow(classifier), Settings(data_dir=tmp_path, heartbeat_s=0.2, visibility_s=1), "w-slow")
    runner = threading.Thread(target=w.run, kwargs={"burst": True})
    runner.start()
    time.sleep(1.8)  # past the 1 s timeout: without extension the message would be visible again
    assert store.requests.receive(1, wait_s=0) == []
    runner.join()
    result = store.results.load_result(rid)
    assert result is not None and result.label == "tench"
    assert store.requests.depth().backlog == 0


class _Reloads:
    """The real classifier on another version than the one the requests were made for (the
    face gallery reloaded between the web's look at it and the batch): "old", not ""."""

    def __init__(self, inner: Classifier) -> None:
        self.inner, self.spec, self.times, self.name = inner, inner.spec, inner.times, "r"
        self.version = "old"

    def classify(self, images: Any, top_k: int = 5) -> Any:
        return self.inner.classify(images, top_k)


def test_an_answer_is_remembered_only_under_the_version_that_gave_it(
    store: Parts, classifier: Classifier, tmp_path: Path
) -> None:
    _submit(store, TENCH)
    assert _worker(store, _Reloads(classifier), tmp_path).run_once(wait_s=1) == 1
    (rid,) = store.ids.new_ids(1)
    digest = hashlib.sha256(TENCH).hexdigest()
    assert store.results.answer_from_cache(_again(store, rid, digest)) is None


def _again(store: Parts, rid: str, digest: str) -> Request:
    """A request for bytes sent before, as the web makes it (the dedup key is its business)."""
    when = time.time()
    return make_request(store, rid=rid, digest=digest, name="again.jpg", model=MODEL, reply_to="", submitted_at=when)


def test_the_meter_reports_cpu_as_a_share_of_the_cores_and_the_rate_while_busy() -> None:
    from iraas.worker.meter import Meter

    wall, cpu = [0.0], [0.0]
    meter = Meter(2, cpu_clock=lambda: cpu[0], clock=lambda: wall[0])
    assert meter.read() == (0.0, 0.0)  # nothing measured yet
    wall[0], cpu[0] = 10.0, 15.0  # 1.5 cores of 2 for 10 s
    meter.worked(8, 0.4)
    meter.worked(12, 0.6)  # 20 images in 1 s busy: 20/s, however long it idled besides
    assert meter.read() == (0.75, 20.0)
    wall[0] = 20.0  # idle: no CPU, and the rate stays what it was
    assert meter.read() == (0.0, 20.0)
    wall[0], cpu[0] = 21.0, 16.0
    meter.worked(10, 1.0)  # 10/s now: smoothed with the last
    assert meter.read() == (0.5, 15.0)


def test_heartbeats_carry_the_workers_cpu_and_rate(store: Parts, classifier: Classifier, tmp_path: Path) -> None:
    w = _worker(store, classifier, tmp_path)
    w.meter.read()  # the period starts now
    for data in (TENCH, SHARK):
        _submit(store, data, reply_to="")
    handled = 0
    while handled < 2:
        handled += w.run_once(wait_s=1)
    w._write_beat()
    beat = store.cluster.heartbeats()["w-test"]
    assert beat.rate > 0 and beat.cpu is not None and 0 < beat.cpu <= 1
    assert beat.rate == round(w.meter.rate, 2)  # what the controller reads is what the worker measured


def test_images_on_lent_cores_leave_the_rate_unmeasured(store: Parts, tmp_path: Path) -> None:
    """A worker's rate sizes the fleet under load (the `wait` rule): an image that ran on idle
    cores lent to it ran faster than it will then, so its batch is not measured."""
    load = {"running": 1}  # only this worker runs: the other core is free
    clf = Classifier(resolve_model(None), idle_threads=2, running=lambda: load["running"])
    assert clf.adaptive is not None and clf.adaptive.opened.wait(timeout=60)
    w = _worker(store, clf, tmp_path)
    _submit(store, TENCH, reply_to="")
    while not w.run_once(wait_s=1):
        pass
    assert clf.times.borrowed == 1
    assert w.meter.read()[1] == 0.0  # not measured
    load["running"] = 2  # the other core is taken now
    _submit(store, SHARK, reply_to="")
    while not w.run_once(wait_s=1):
        pass
    assert clf.times.borrowed == 1
    assert w.meter.read()[1] > 0  # measured on the worker's own thread


class _NoDedup:
    """The real blob store, refusing to write dedup entries (a full or read-only folder)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def link(self, pairs: Any) -> set[str]:
        if any(k.startswith("dedup/") for k in pairs):
            raise BlobError("dedup/ is read-only")
        return set(self.inner.link(pairs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_dedup_entry_that_cannot_be_written_costs_no_answer(
    store: Parts, inbox: Inbox, classifier: Classifier, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store.results.blobs = _NoDedup(store.results.blobs)  # type: ignore[assignment]
    rid = _submit(store, TENCH)
    worker = _worker(store, classifier, tmp_path)
    assert worker.run_once(wait_s=1) == 1
    (reply,) = inbox.receive(1)
    assert (Result.from_json(reply).id, Result.from_json(reply).label) == (rid, "tench")
    assert store.requests.depth().backlog == 0  # answered and deleted: not to be tried again
    assert "dedup entries not written" in caplog.text
    _submit(store, SHARK)  # and the worker goes on
    assert worker.run_once(wait_s=1) == 1


class _Recorder:
    """A real part whose calls named in `names` are written to `log` (name, first argument,
    durable) before they run."""

    def __init__(self, inner: Any, log: list[tuple[str, list[str], bool | None]], names: set[str]) -> None:
        self.inner, self.log, self.names = inner, log, names

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in self.names:
            return attr

        def call(*args: Any, **kw: Any) -> Any:
            self.log.append((name, sorted(str(a)[:8] for a in args[0]), kw.get("durable")))
            return attr(*args, **kw)

        return call


def test_replies_do_not_wait_for_the_disk_and_no_request_is_deleted_before_its_result_is_on_it(
    store: Parts, inbox: Inbox, classifier: Classifier, tmp_path: Path
) -> None:
    log: list[tuple[str, list[str], bool | None]] = []
    store.results.blobs = _Recorder(store.results.blobs, log, {"put_many", "sync", "link"})  # type: ignore[assignment]
    _submit(store, TENCH)
    _submit(store, SHARK)
    worker = _worker(store, classifier, tmp_path)
    worker.replies = _Recorder(worker.replies, log, {"send_many"})  # type: ignore[assignment]
    worker.requests = _Recorder(worker.requests, log, {"delete_batch"})  # type: ignore[assignment]
    assert worker.run_once(wait_s=1) == 2
    assert [(name, durable) for name, _, durable in log] == [
        ("put_many", False),  # the results, not waiting for the disk
        ("send_many", None),  # the replies
        ("sync", None),  # the results on the disk
        ("delete_batch", None),  # only then the requests gone
        ("link", None),  # the dedup entries: the results under a second name
    ]
    assert log[0][1] == log[2][1] == ["results/", "results/"]
    assert len(inbox.receive(2)) == 2


def test_a_result_a_power_cut_left_empty_is_answered_anew(
    store: Parts, inbox: Inbox, classifier: Classifier, tmp_path: Path
) -> None:
    rid = _submit(store, TENCH)
    # What a power cut between storing a result and its fsync may leave: the result's name
    # with no content, and its request still queued, received once and never deleted.
    (first,) = store.requests.receive(1, wait_s=0, visibility_s=5)
    store.requests.change_visibility(first.receipt, 0)
    store.blobs.put(f"results/{rid}.json", b"")
    assert _worker(store, classifier, tmp_path).run_once(wait_s=1) == 1
    (reply,) = inbox.receive(1)
    replied = Result.from_json(reply)
    assert (replied.label, replied.timings["attempt"]) == ("tench", 2)
    stored = store.results.load_result(rid)
    assert stored is not None and stored.label == "tench"  # the record stands again
    assert store.requests.depth().backlog == 0


def test_a_recognition_makes_one_file_its_image_and_records_the_rest(
    store: Parts, classifier: Classifier, tmp_path: Path
) -> None:
    """The result, its dedup entry and the heartbeats are rows of the record file: no inode
    is made for them (a file costs 0.1 to 0.4 ms on some file systems)."""
    root = tmp_path / "blobs"

    def files() -> set[str]:
        on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
        return {f for f in on_disk if not f.startswith(".records.db")}

    worker = _worker(store, classifier, tmp_path)
    store.ids.new_ids(1)  # (the first id makes the deployment's id key)
    made = files()
    rid = _submit(store, TENCH)
    (image,) = files() - made
    assert image.startswith("inputs/")
    assert worker.run_once(wait_s=1) == 1
    assert files() - made == {image}
    (entry,) = store.blobs.list("dedup/")
    assert store.blobs.get(entry) == store.blobs.get(f"results/{rid}.json")
