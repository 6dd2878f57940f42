"""The web tier in process: Starlette's TestClient over `create_app` with the embedded store,
no worker. What the web tier alone decides — refusals, ids, status, 202s, cache answers,
operational routes — is checked here, and that a refused request stored and queued nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from iraas.config import Settings
from iraas.messages import ClusterStatus, Result
from iraas.parts import Parts, build, make_app

from .conftest import IMAGENET
from .drafts import make_request
from .images import png_bomb
from .imageserver import image_server

PHOTOS = sorted((IMAGENET / "images").iterdir())
JPEG = PHOTOS[0].read_bytes()
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
MAX_FILE = 1_000_000


@pytest.fixture
def store(tmp_path: Path) -> Parts:
    return build(_settings(tmp_path))


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, max_file_bytes=MAX_FILE, max_files=20, url_allow=("localhost",))


@pytest.fixture
def client(tmp_path: Path, store: Parts) -> Iterator[TestClient]:
    with TestClient(make_app(_settings(tmp_path), store), base_url="http://127.0.0.1") as c:
        yield c


def _nothing_stored_or_queued(store: Parts) -> None:
    assert store.requests.depth().backlog == 0
    assert store.blobs.list("inputs/") == []
    assert store.blobs.list("results/") == []


@pytest.mark.parametrize(
    ("files", "status", "code"),
    [
        ([("big.jpg", JPEG + b"\0" * MAX_FILE)], 413, "too_large"),
        ([(f"f{i}.jpg", JPEG) for i in range(21)], 413, "too_many_files"),
        ([("page.jpg", b"<!doctype html><html></html>")], 415, "unsupported_format"),
        ([("noise.jpg", bytes(range(256)) * 8)], 415, "not_an_image"),
        ([("doc.eps", EPS)], 415, "unsupported_format"),
        ([("cut.jpg", JPEG[: len(JPEG) // 2])], 422, "truncated"),
        ([("bomb.png", png_bomb())], 422, "too_many_pixels"),
        ([("empty.jpg", b"")], 400, "empty"),
        ([("ok.jpg", JPEG), ("bad.jpg", b"GIF89a-not-really")], 415, "not_an_image"),
    ],
    ids=["too-large", "too-many", "html", "random", "eps", "truncated", "bomb", "empty", "one-bad-of-two"],
)
def test_bad_uploads(client: TestClient, store: Parts, files: list[tuple[str, bytes]], status: int, code: str) -> None:
    resp = client.post("/v1/recognitions", files=[("files", f) for f in files])
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == code and body["detail"]
    if code != "too_many_files":
        assert body["file"] == files[-1][0]
    _nothing_stored_or_queued(store)


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"files": [("wrong", ("a.jpg", JPEG))]}, 400, "missing_field"),
        ({"json": {"nothing": 1}}, 400, "missing_field"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "bad_json"),
        ({"json": {"url": "ftp://example.com/a.jpg"}}, 400, "bad_url"),
        ({"json": {"url": "http://localhost:1/a.jpg"}}, 422, "unreachable_url"),
        ({"content": b"raw", "headers": {"content-type": "image/jpeg"}}, 415, "bad_content_type"),
    ],
    ids=["missing-field", "missing-url", "bad-json", "bad-url", "unreachable", "not-multipart"],
)
def test_bad_requests(client: TestClient, store: Parts, kwargs: dict[str, object], status: int, code: str) -> None:
    resp = client.post("/v1/recognitions", **kwargs)  # type: ignore[arg-type]
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == code
    _nothing_stored_or_queued(store)


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{port}/{name}",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]:{port}/{name}",
        "http://localhost:{port}/redirect?to=http://127.0.0.1:{port}/{name}",
    ],
    ids=["loopback", "metadata", "ipv4-mapped", "redirect-to-loopback"],
)
def test_ssrf_refusals(client: TestClient, store: Parts, target: str) -> None:
    with image_server(IMAGENET / "images") as port:
        url = target.format(port=port, name=PHOTOS[0].name)
        resp = client.post("/v1/recognitions", json={"url": url})
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"] == "refused_address"
    _nothing_stored_or_queued(store)


def test_async_submit_is_queued_once_and_its_status_follows_the_store(client: TestClient, store: Parts) -> None:
    resp = client.post("/v1/recognitions?wait=false", files=[("files", ("a.jpg", JPEG)), ("files", ("b.jpg", JPEG))])
    assert resp.status_code == 202
    entries = resp.json()
    assert [e["status"] for e in entries] == ["queued", "queued"]
    assert store.requests.depth().visible == 2
    assert len(store.blobs.list("inputs/")) == 1  # the same bytes are stored once
    first, second = (e["id"] for e in entries)
    assert client.get(f"/v1/recognitions/{first}").json()["status"] == "queued"
    # a worker holds it: the controller's published view says so
    store.cluster.publish_status(ClusterStatus(running=[first]))
    time.sleep(store.cluster.status_ttl_s)
    assert client.get(f"/v1/recognitions/{first}").json()["status"] == "running"
    done = Result(id=second, name="b.jpg", status="done", model="efficientnet-lite0", label="tench", confidence=0.9)
    store.results.publish_result(done)
    got = client.get(f"/v1/recognitions/{second}").json()
    assert (got["status"], got["label"], got["location"]) == ("done", "tench", f"/v1/recognitions/{second}")


def test_ids_this_deployment_never_issued_are_404_and_malformed_ones_400(client: TestClient, store: Parts) -> None:
    (real,) = store.ids.new_ids(1)
    forged = real[:-1] + ("0" if real[-1] != "0" else "1")
    for rid in ("0" * 32, forged):
        resp = client.get(f"/v1/recognitions/{rid}")
        assert resp.status_code == 404 and resp.json()["error"] == "not_found"
    assert client.get(f"/v1/recognitions/{real}").json()["status"] == "queued"
    assert client.get("/v1/recognitions/nope").status_code == 400


def test_the_same_image_is_answered_from_the_stored_answer_without_queueing(client: TestClient, store: Parts) -> None:
    import hashlib

    (rid,) = store.ids.new_ids(1)
    digest = hashlib.sha256(JPEG).hexdigest()
    req = make_request(
        store, rid=rid, digest=digest, name="a.jpg", model="efficientnet-lite0", reply_to="", submitted_at=time.time()
    )
    answer = Result(id=rid, name="a.jpg", status="done", model="efficientnet-lite0", label="tench", confidence=0.8)
    store.results.publish_result(answer)  # as a worker: the result stored, then remembered
    store.results.remember([(req, answer)])
    resp = client.post("/v1/recognitions", files=[("files", ("again.jpg", JPEG))])
    (entry,) = resp.json()
    assert (entry["status"], entry["label"], entry["cached"], entry["name"]) == ("done", "tench", True, "again.jpg")
    assert entry["id"] != rid and store.requests.depth().backlog == 0
    assert client.get(entry["location"]).json()["label"] == "tench"


def test_a_sync_request_with_no_answer_in_time_says_where_to_look(client: TestClient, store: Parts) -> None:
    resp = client.post("/v1/recognitions?timeout=0.2", files=[("files", ("a.jpg", JPEG))])
    (entry,) = resp.json()
    assert entry["status"] == "queued" and client.get(entry["location"]).json()["status"] == "queued"
    assert client.post("/v1/recognitions?timeout=soon", files=[("files", ("a.jpg", JPEG))]).status_code == 400


def test_operational_endpoints(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    assert "/v1/recognitions" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    client.post("/v1/recognitions", files=[("files", ("x.jpg", b""))])
    metrics = client.get("/metrics").text
    for name in ("iraas_http_requests_total", "iraas_queue_depth", "iraas_workers", "iraas_dedup_hits_total"):
        assert name in metrics, name
    assert 'route="/v1/recognitions",status="400"' in metrics
    cluster = client.get("/v1/cluster").json()
    assert set(cluster["queue"]) >= {"visible", "in_flight"} and "running" not in cluster
    page = client.get("/").text
    assert "<input" in page and '<script src="/static/app.js"' in page
    assert "/v1/recognitions" in client.get("/static/app.js").text


def _client_with(tmp_path: Path, **changes: object) -> TestClient:
    import dataclasses

    settings = dataclasses.replace(_settings(tmp_path), **changes)  # type: ignore[arg-type]
    return TestClient(make_app(settings, build(settings)), base_url="http://127.0.0.1")


def test_past_max_backlog_new_work_is_shed_with_retry_after(tmp_path: Path) -> None:
    with _client_with(tmp_path, max_backlog=2) as c:
        first = c.post("/v1/recognitions?wait=false", files=[("files", (p.name, p.read_bytes())) for p in PHOTOS[:2]])
        assert first.status_code == 202
        time.sleep(0.6)  # the depth is read at most twice a second
        shed = c.post("/v1/recognitions?wait=false", files=[("files", ("c.jpg", PHOTOS[2].read_bytes()))])
        assert (shed.status_code, shed.json()["error"]) == (503, "overloaded")
        assert int(shed.headers["retry-after"]) > 0
        assert build(_settings(tmp_path)).requests.depth().visible == 2  # the shed request queued nothing


def test_a_locked_queue_file_is_a_quick_503_and_not_ready(tmp_path: Path) -> None:
    import sqlite3

    with _client_with(tmp_path, store_timeout_s=0.5) as c:
        c.get("/readyz")
        holder = sqlite3.connect(tmp_path / "queue.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # a backup, a stuck process
        try:
            start = time.monotonic()
            r = c.post("/v1/recognitions", files=[("files", ("a.jpg", JPEG))])
            assert (r.status_code, r.json()["error"]) == (503, "store_unavailable") and "retry-after" in r.headers
            ready = c.get("/readyz")
            assert ready.status_code == 503 and time.monotonic() - start < 5
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert c.get("/readyz").status_code == 200
        assert build(_settings(tmp_path)).requests.depth().backlog == 0  # nothing half-queued


def test_a_full_disk_refuses_uploads_and_is_not_ready(tmp_path: Path) -> None:
    with _client_with(tmp_path, min_free_bytes=1 << 60) as c:
        r = c.post("/v1/recognitions", files=[("files", ("a.jpg", JPEG))])
        assert (r.status_code, r.json()["error"]) == (507, "disk_full") and "retry-after" in r.headers
        assert c.get("/readyz").status_code == 503
    _nothing_stored_or_queued(build(_settings(tmp_path)))


def test_a_large_upload_waits_on_disk_and_is_stored_whole(tmp_path: Path) -> None:
    big = max(PHOTOS, key=lambda p: p.stat().st_size).read_bytes()
    with _client_with(tmp_path, spool_bytes=4096) as c:
        r = c.post("/v1/recognitions?wait=false", files=[("files", ("big.jpg", big))])
        assert r.status_code == 202
    store = build(_settings(tmp_path))
    (key,) = store.blobs.list("inputs/")
    assert store.blobs.get(key) == big


@pytest.mark.parametrize("raw", [".", "..", " ", "", "-x", "a/b", "x" * 65, "Al\x00ice", "\u0410lice"])
def test_person_names_that_cannot_be_enrolled(raw: str) -> None:
    from iraas.faces.names import person_name
    from iraas.refusals import InputError

    with pytest.raises(InputError) as info:
        person_name(raw, [])
    assert (info.value.status, info.value.code) == (400, "bad_name")


def test_person_names_are_normalised_and_look_alikes_refused() -> None:
    from iraas.faces.names import person_name
    from iraas.refusals import InputError

    assert person_name("Jose\u0301 ", []) == "Jos\u00e9"  # NFC: one spelling however typed
    assert (
        person_name("\u0410\u043b\u0438\u0441\u0430", ["Alice"]) == "\u0410\u043b\u0438\u0441\u0430"
    )  # Alisa in Cyrillic
    for taken, new in (("ABE", "\u0410\u0412\u0415"), ("Alice", "alice")):  # Cyrillic look-alikes; case
        with pytest.raises(InputError) as info:
            person_name(new, [taken])
        assert (info.value.status, info.value.code) == (409, "name_conflict")


class _AwayBlobs:
    """A blob store whose server is away a moment (a database restart), after `ok` calls."""

    def __init__(self, inner: object) -> None:
        self.inner, self.away = inner, False

    def __getattr__(self, name: str) -> object:
        from iraas.blobs.base import BlobError

        def call(*args: object, **kw: object) -> object:
            if self.away:
                raise BlobError("database postgresql://iraas:***@db/iraas: terminating connection")
            return getattr(self.inner, name)(*args, **kw)

        return call


def test_a_store_away_a_moment_is_503_with_retry_after_on_any_route(tmp_path: Path) -> None:
    from iraas.parts import assemble

    settings = _settings(tmp_path)
    real = build(settings)
    away = _AwayBlobs(real.blobs)
    parts = assemble(requests=real.requests, blobs=away, replies=real.replies)  # type: ignore[arg-type]
    with TestClient(make_app(settings, parts), base_url="http://127.0.0.1") as client:
        (rid,) = parts.ids.new_ids(1)
        away.away = True
        for path in (f"/v1/recognitions/{rid}", "/v1/cluster", "/v1/keys"):
            r = client.get(path)
            assert r.status_code == 503, (path, r.text)
            assert r.json()["error"] == "store_unavailable" and r.json()["request_id"], path
            assert int(r.headers["retry-after"]) > 0, path
        away.away = False
        assert client.get(f"/v1/recognitions/{rid}").json()["status"] == "queued"  # back by itself


def test_a_deadline_no_fleet_could_meet_is_answered_expired_at_once(client: TestClient, store: Parts) -> None:
    # The controller measured 5 images/s a worker, 2 workers at most, 40 requests in the queue:
    # the next waits 41 / 10 = 4.1 s at least.
    load = {"rate": 5.0, "max_workers": 2, "backlog": 40}
    store.cluster.publish_status(ClusterStatus(at=time.time(), load=load))
    files = [("files", ("a.jpg", PHOTOS[0].read_bytes())), ("files", ("b.jpg", PHOTOS[1].read_bytes()))]
    resp = client.post("/v1/recognitions?wait=false", files=files, data={"deadline_s": "4"})
    assert resp.status_code == 202
    for got in resp.json():
        assert (got["status"], got["error"]) == ("failed", "expired")
        assert "deadline of 4 s" in got["reason"] and "2 workers" in got["reason"]
        assert client.get(got["location"]).json()["error"] == "expired"  # the stored answer, final
    _nothing_stored_or_queued_but_results(store)
    # with 4.15 s, the first can make it (41st in line: 4.1 s), the second cannot (42nd: 4.2 s)
    resp = client.post("/v1/recognitions?wait=false", files=files, data={"deadline_s": "4.15"})
    assert [e["status"] for e in resp.json()] == ["queued", "failed"]
    assert store.requests.depth().visible == 1


def test_a_deadline_is_never_answered_early_on_a_stale_or_rateless_status(tmp_path: Path) -> None:
    statuses = (
        ClusterStatus(at=time.time() - 600, load={"rate": 5.0, "max_workers": 2, "backlog": 400}),  # controller gone
        ClusterStatus(at=time.time(), load={"rate": None, "max_workers": 2, "backlog": 400}),  # nothing measured
    )
    for n, status in enumerate(statuses):
        settings = _settings(tmp_path / str(n))
        parts = build(settings)
        parts.cluster.publish_status(status)
        with TestClient(make_app(settings, parts), base_url="http://127.0.0.1") as c:
            resp = c.post("/v1/recognitions?wait=false", files=[("files", ("a.jpg", JPEG))], data={"deadline_s": "1"})
        assert resp.json()[0]["status"] == "queued"


def _nothing_stored_or_queued_but_results(store: Parts) -> None:
    assert store.requests.depth().backlog == 0 and store.blobs.list("inputs/") == []
