"""The worker loop in process, on the real embedded queue and blob store."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from iraas.backends import Backends, embedded
from iraas.config import Settings
from iraas.messages import Request, Result, dedup_key, input_key, result_key
from iraas.model.classifier import Classifier
from iraas.worker import Worker

from .conftest import IMAGENET

TENCH = (IMAGENET / "images" / "n01440764_tench.JPEG").read_bytes()


@pytest.fixture
def backends(tmp_path: Path) -> Backends:
    return embedded(Settings(data_dir=tmp_path, heartbeat_s=0.2))


def _submit(b: Backends, rid: str, data: bytes, reply_to: str = "replies-t") -> None:
    digest = hashlib.sha256(data).hexdigest()
    b.blobs.put(input_key(digest), data)
    dedup = dedup_key("efficientnet-lite0", digest)
    req = Request(rid, input_key(digest), f"{rid}.jpg", "efficientnet-lite0", reply_to, time.time(), dedup)
    b.requests.send(req.to_json())


def _worker(b: Backends, clf: Classifier, tmp_path: Path) -> Worker:
    return Worker(b, clf, Settings(data_dir=tmp_path, heartbeat_s=0.2, visibility_s=5), "w-test")


def test_classifies_stores_replies_and_deletes(backends: Backends, classifier: Classifier, tmp_path: Path) -> None:
    _submit(backends, "a" * 32, TENCH)
    assert _worker(backends, classifier, tmp_path).run_once(wait_s=1) == 1
    stored = Result.from_json(backends.blobs.get(result_key("a" * 32)))
    assert (stored.status, stored.label, stored.worker) == ("done", "tench", "w-test")
    (reply,) = backends.queue("replies-t").receive(1)
    assert Result.from_json(reply.body) == stored
    assert backends.requests.depth().backlog == 0
    digest = hashlib.sha256(TENCH).hexdigest()
    time.sleep(0.2)  # the dedup entry is written in the background
    assert backends.blobs.exists(dedup_key("efficientnet-lite0", digest))


def test_redelivered_request_is_answered_from_the_stored_result(
    backends: Backends, classifier: Classifier, tmp_path: Path
) -> None:
    first = Result("b" * 32, "b.jpg", "done", "efficientnet-lite0", "goldfish", 0.5)
    backends.blobs.put(result_key("b" * 32), first.to_json().encode())
    _submit(backends, "b" * 32, TENCH)
    before = classifier.times.images
    _worker(backends, classifier, tmp_path).run_once(wait_s=1)
    assert classifier.times.images == before  # no inference
    assert Result.from_json(backends.blobs.get(result_key("b" * 32))) == first  # unchanged
    (reply,) = backends.queue("replies-t").receive(1)
    assert Result.from_json(reply.body).label == "goldfish"


def test_bad_image_is_a_final_failed_result_not_a_retry(
    backends: Backends, classifier: Classifier, tmp_path: Path
) -> None:
    _submit(backends, "c" * 32, TENCH[:2000])
    _worker(backends, classifier, tmp_path).run_once(wait_s=1)
    result = Result.from_json(backends.blobs.get(result_key("c" * 32)))
    assert (result.status, result.error) == ("failed", "truncated")
    assert backends.requests.depth().backlog == 0  # deleted, not left to come back


def test_stopping_worker_releases_what_it_has_not_started(
    backends: Backends, classifier: Classifier, tmp_path: Path
) -> None:
    _submit(backends, "d" * 32, TENCH)
    w = _worker(backends, classifier, tmp_path)
    w.stop()
    assert w.run_once(wait_s=1) == 0
    depth = backends.requests.depth()
    assert (depth.visible, depth.in_flight) == (1, 0)  # back at once, not after the visibility timeout


def test_exits_by_itself_after_max_idle(backends: Backends, classifier: Classifier, tmp_path: Path) -> None:
    w = _worker(backends, classifier, tmp_path)
    start = time.monotonic()
    w.run(max_idle_s=1.0)
    assert 1.0 <= time.monotonic() - start < 10
    assert backends.blobs.list("heartbeats/") == []  # it says goodbye
