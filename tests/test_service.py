"""End to end: the real service (`iraas up`), real worker processes, HTTP on loopback."""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import requests

from iraas.model.classifier import Classifier

from .conftest import DATASETS, IMAGENET
from .imageserver import image_server
from .service import Service, course_post

PHOTOS = sorted((IMAGENET / "images").iterdir())
COURSE = DATASETS / "cse546-imagenet-100" / "images"
MAX_FILE = 1_000_000


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = Service(
        tmp_path_factory.mktemp("svc") / "data",
        max_workers=2,
        scale_in_after_s=2,
        visibility_s=10,
        max_file_bytes=MAX_FILE,
        max_files=20,
        url_allow="localhost",
        heartbeat_s=0.5,
    )
    service.start()
    yield service
    service.stop()


def expected(classifier: Classifier, files: list[Path]) -> list[str]:
    return [p.label for p in classifier.predict([f.read_bytes() for f in files])]


def post_files(svc: Service, files: list[Path], **params: str) -> httpx.Response:
    multipart = [("files", (f.name, f.read_bytes(), "image/jpeg")) for f in files]
    return httpx.post(svc.url + "/v1/recognitions", files=multipart, params=params, timeout=120)


def test_sync_one_and_many(svc: Service, classifier: Classifier) -> None:
    one = post_files(svc, PHOTOS[:1])
    assert one.status_code == 200, one.text
    (entry,) = one.json()
    assert entry["status"] == "done" and entry["label"] == "tench" and entry["model"] == "efficientnet-lite0"
    assert len(entry["top5"]) == 5 and 0 < entry["confidence"] <= 1
    assert set(entry["timings"]) >= {"queued", "inference", "total"}
    files = PHOTOS[10:16]
    many = post_files(svc, files)
    assert [e["name"] for e in many.json()] == [f.name for f in files]
    assert [e["label"] for e in many.json()] == expected(classifier, files)


def test_async_answers_202_then_result(svc: Service, classifier: Classifier) -> None:
    files = PHOTOS[20:23]
    resp = post_files(svc, files, wait="false")
    assert resp.status_code == 202
    entries = resp.json()
    assert all(e["status"] == "queued" and e["location"] == f"/v1/recognitions/{e['id']}" for e in entries)

    def done() -> list[dict[str, object]] | None:
        got = [httpx.get(svc.url + e["location"], timeout=10).json() for e in entries]
        assert all(g["status"] in ("queued", "running", "done") for g in got)
        return got if all(g["status"] == "done" for g in got) else None

    got = svc.wait_for(done)
    assert [g["label"] for g in got] == expected(classifier, files)
    missing = httpx.get(svc.url + "/v1/recognitions/" + "0" * 32)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert httpx.get(svc.url + "/v1/recognitions/nope").status_code == 400


def test_url_intake_from_an_allowed_local_server(svc: Service, classifier: Classifier) -> None:
    files = PHOTOS[30:32]
    with image_server(IMAGENET / "images") as port:
        urls = [f"http://localhost:{port}/{f.name}" for f in files]
        one = httpx.post(svc.url + "/v1/recognitions", json={"url": urls[0]}, timeout=60)
        both = httpx.post(svc.url + "/v1/recognitions", json={"urls": urls}, timeout=60)
    assert one.status_code == 200, one.text
    assert one.json()[0]["name"] == urls[0]
    assert [e["label"] for e in both.json()] == expected(classifier, files)


JPEG = PHOTOS[0].read_bytes()


def _read_response(s: socket.socket) -> str:
    data = b""
    while b"\r\n\r\n" not in data and (chunk := s.recv(65536)):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    while len(body) < length and (chunk := s.recv(65536)):
        body += chunk
    return (head + b"\r\n\r\n" + body).decode(errors="replace")


@pytest.mark.parametrize("declared", [10 * MAX_FILE, 50 * MAX_FILE], ids=["file-over-limit", "body-over-limit"])
def test_oversized_upload_is_refused_before_the_body_is_read(svc: Service, declared: int) -> None:
    boundary = "xyzzy"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="huge.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", svc.port), timeout=30) as s:
        s.sendall(
            f"POST /v1/recognitions HTTP/1.1\r\nHost: localhost\r\nContent-Length: {declared}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode()
            + head
        )
        s.sendall(JPEG + b"\0" * (MAX_FILE + 65536 - len(JPEG)))  # just over the limit, 2 % of the body
        reply = _read_response(s)
    assert reply.startswith("HTTP/1.1 413"), reply[:200]
    assert '"too_large"' in reply
    if declared < 20 * MAX_FILE:  # within the body limit: refused by the per-file check, naming it
        assert '"file":"huge.jpg"' in reply


def test_service_keeps_serving_after_bad_input(svc: Service) -> None:
    assert post_files(svc, PHOTOS[:1]).json()[0]["label"] == "tench"


def test_same_image_is_answered_from_the_stored_result(svc: Service) -> None:
    first = post_files(svc, PHOTOS[40:41]).json()[0]
    second = post_files(svc, PHOTOS[40:41]).json()[0]
    assert first["id"] != second["id"]
    assert (second["cached"], second["label"], second["top5"]) == (True, first["label"], first["top5"])
    assert httpx.get(svc.url + second["location"]).json()["status"] == "done"


def test_course_contract_100_concurrent_from_zero(svc: Service, classifier: Classifier) -> None:
    svc.wait_for(lambda: svc.cluster()["workers"] == [], timeout=30)
    files = sorted(COURSE.iterdir(), key=lambda f: int(f.stem.split("_")[1]))
    assert len(files) == 100

    with ThreadPoolExecutor(100) as pool:
        answers = list(pool.map(functools.partial(course_post, svc.url), files))
    labels = expected(classifier, files)
    assert answers == [f"{f.stem}:{label}" for f, label in zip(files, labels, strict=True)]
    # and after the idle period the fleet is back to min_workers (0)
    start = time.monotonic()
    svc.wait_for(lambda: svc.cluster()["workers"] == [], timeout=30)
    assert time.monotonic() - start < 30
    decisions = svc.cluster()["decisions"]
    assert any("scale out" in d["reason"] for d in decisions) and any("scale in" in d["reason"] for d in decisions)


def test_myfile_field_and_course_errors(svc: Service) -> None:
    r = requests.post(
        svc.url + "/", files={"myfile": ("test_0.JPEG", (COURSE / "test_0.JPEG").read_bytes())}, timeout=60
    )
    assert r.status_code == 200 and r.text.startswith("test_0:")
    bad = requests.post(svc.url + "/", files={"inputFile": ("x.jpg", b"nope")}, timeout=60)
    assert bad.status_code == 415 and bad.json()["file"] == "x.jpg"


def test_metrics_and_cluster_after_real_work(svc: Service) -> None:
    metrics = httpx.get(svc.url + "/metrics").text
    for name in ("iraas_image_latency_seconds_bucket", "iraas_batch_size_bucket", "iraas_inference_seconds_bucket"):
        assert name in metrics, name
    cluster = svc.cluster()
    assert cluster["policy"]["max_workers"] == 2
    assert all({"at", "backlog", "desired", "reason"} <= set(d) for d in cluster["decisions"])
