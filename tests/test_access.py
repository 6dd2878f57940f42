"""Who may use the service: every route against every kind of caller on a real service (`iraas
up` with keys created by `iraas keys`), Host and Origin refusals, quotas to 429 and back,
revocation seen by a second web process, anonymous course clients; the pure parts in process."""

from __future__ import annotations

import asyncio
import csv
import functools
import hashlib
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from iraas.access.keys import Key, KeyRing, KeyRingError, digest
from iraas.access.quota import Bucket, KeyLimits, Quotas
from iraas.config import Settings
from iraas.loadgen.run import Plan, run
from iraas.model.classifier import Classifier
from iraas.parts import build, make_app
from iraas.web.auth import keys_required
from iraas.web.gate import allowed_hosts, foreign_origin, host_name

from .conftest import DATASETS, IMAGENET
from .service import Service, course_post, create_key

PHOTO = sorted((IMAGENET / "images").iterdir())[0]
COURSE = DATASETS / "cse546-imagenet-100" / "images"
CALLERS = ("none", "wrong", "revoked", "recognize", "admin", "other")
OPEN = dict.fromkeys(CALLERS, 200)
ANY_KEY = {"none": 401, "wrong": 401, "revoked": 401, "recognize": 200, "admin": 200, "other": 200}


@dataclass
class Deployment:
    svc: Service
    keys: dict[str, str]
    alice_id: str  # a request made with the "recognize" key

    def headers(self, caller: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[caller]}"} if caller in self.keys else {}


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    data = tmp_path_factory.mktemp("access") / "data"
    keys = {
        "admin": create_key(data, "root", "admin"),
        "recognize": create_key(data, "alice"),
        "other": create_key(data, "bob"),
        "revoked": create_key(data, "mallory"),
        "wrong": "iraas_" + "x" * 43,
    }
    subprocess.run(
        [sys.executable, "-m", "iraas.cli", "keys", "revoke", "mallory", "--data-dir", str(data)], check=True
    )
    svc = Service(data, max_workers=1, scale_in_after_s=2).start()
    try:
        r = httpx.post(
            svc.url + "/v1/recognitions",
            files=[("files", (PHOTO.name, PHOTO.read_bytes()))],
            headers={"Authorization": f"Bearer {keys['recognize']}"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        yield Deployment(svc, keys, r.json()[0]["id"])
    finally:
        svc.stop()


def _call(dep: Deployment, caller: str, method: str, path: str) -> httpx.Response:
    path = path.replace("{alice_id}", dep.alice_id)
    files = [("files", (PHOTO.name, PHOTO.read_bytes()))] if method == "POST" else None
    if path == "/":
        files = [("inputFile", (PHOTO.name, PHOTO.read_bytes()))] if method == "POST" else None
    return httpx.request(method, dep.svc.url + path, headers=dep.headers(caller), files=files, timeout=60)


ROUTES = [
    ("GET", "/", OPEN),
    ("GET", "/static/app.js", OPEN),
    ("GET", "/healthz", OPEN),
    ("GET", "/readyz", OPEN),
    ("GET", "/metrics", OPEN),  # open to a scraper on loopback; in process below: admin otherwise
    ("GET", "/v1/me", ANY_KEY),
    ("GET", "/v1/cluster", ANY_KEY),
    ("POST", "/v1/recognitions?wait=false", ANY_KEY | {"recognize": 202, "admin": 202, "other": 202}),
    ("GET", "/v1/recognitions/{alice_id}", ANY_KEY | {"other": 404}),  # bob cannot read alice's
    ("POST", "/", ANY_KEY),  # the course contract, not opened to anonymous callers here
    ("GET", "/v1/keys", ANY_KEY | {"recognize": 403, "other": 403}),
    ("DELETE", "/v1/keys/nobody", ANY_KEY | {"recognize": 403, "other": 403, "admin": 404}),
]


@pytest.mark.parametrize(("method", "path", "expected"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_every_route_against_every_caller(dep: Deployment, method: str, path: str, expected: dict[str, int]) -> None:
    got = {caller: _call(dep, caller, method, path) for caller in CALLERS}
    assert {c: r.status_code for c, r in got.items()} == expected
    for caller, r in got.items():
        if r.status_code in (401, 403):
            body = r.json()
            assert body["error"] == ("unauthorized" if r.status_code == 401 else "forbidden"), body
            assert dep.keys.get(caller, "-") not in r.text  # a key is never echoed back
        if r.status_code == 401:
            assert r.headers["www-authenticate"].startswith("Bearer")
    if expected["revoked"] == 401:
        assert "revoked" in got["revoked"].json()["detail"]


def test_the_gallery_routes_of_a_faces_service_against_every_caller(tmp_path: Path) -> None:
    from .test_faces import COURSE as FACES
    from .test_faces import _course_gallery

    data = tmp_path / "data"
    keys = {"admin": create_key(data, "root", "admin"), "recognize": create_key(data, "alice")}
    keys |= {"other": create_key(data, "bob"), "revoked": create_key(data, "mallory"), "wrong": "iraas_" + "y" * 43}
    subprocess.run(
        [sys.executable, "-m", "iraas.cli", "keys", "revoke", "mallory", "--data-dir", str(data)], check=True
    )
    svc = Service(data, model="faces", gallery=_course_gallery(tmp_path / "gallery"), max_workers=1).start()
    face = sorted((FACES / "face_images_100").iterdir())[0]
    try:
        dep = Deployment(svc, keys, "")
        admin_only = ANY_KEY | {"recognize": 403, "other": 403}
        for method, path, expected in (
            ("GET", "/v1/gallery", admin_only),
            ("POST", "/v1/gallery/Newcomer?timeout=60", admin_only),
        ):
            got = {}
            for caller in CALLERS:
                files = [("files", (face.name, face.read_bytes()))] if method == "POST" else None
                got[caller] = httpx.request(
                    method, svc.url + path, headers=dep.headers(caller), files=files, timeout=90
                )
            assert {c: r.status_code for c, r in got.items()} == expected, {c: r.text[:200] for c, r in got.items()}
        assert httpx.get(svc.url + "/v1/gallery", headers=dep.headers("admin")).json()["people"]["Newcomer"] == 1

        # removal, admin only; then the workers (re-reading the gallery) no longer name that person
        with open(FACES / "labels-100.csv", newline="") as f:
            truth = {r["Image"]: r["Results"] for r in csv.DictReader(f)}[face.stem]

        def label() -> str:
            r = httpx.post(svc.url + "/v1/recognitions", files=[("files", (face.name, face.read_bytes()))], **auth)
            return str(r.json()[0]["label"])

        auth = {"headers": dep.headers("admin"), "timeout": 90}
        assert label() == truth
        got = {c: httpx.delete(f"{svc.url}/v1/gallery/{truth}", headers=dep.headers(c)).status_code for c in CALLERS}
        assert got == ANY_KEY | {"recognize": 403, "other": 403}
        assert truth not in httpx.get(svc.url + "/v1/gallery", headers=dep.headers("admin")).json()["people"]
        assert httpx.delete(f"{svc.url}/v1/gallery/{truth}", headers=dep.headers("admin")).status_code == 404
        svc.wait_for(lambda: label() != truth, timeout=20, every=0.5)
    finally:
        svc.stop()


def test_what_each_scope_sees(dep: Deployment) -> None:
    me = httpx.get(dep.svc.url + "/v1/me", headers={"X-API-Key": dep.keys["recognize"]}).json()  # the other header
    assert me == {"name": "alice", "scope": "recognize"}
    full = httpx.get(dep.svc.url + "/v1/cluster", headers=dep.headers("admin")).json()
    summary = httpx.get(dep.svc.url + "/v1/cluster", headers=dep.headers("recognize")).json()
    # the load (and its last minutes, for the page's chart), not the deployment's inner workings
    assert "decisions" in full and "webhooks" in full and set(summary) == {"queue", "workers", "history"}
    assert len(summary["history"][0]) == 4 and "fleet_errors" not in summary  # [at, waiting, in flight, workers]
    mine = httpx.get(f"{dep.svc.url}/v1/recognitions/{dep.alice_id}", headers=dep.headers("recognize")).json()
    admin = httpx.get(f"{dep.svc.url}/v1/recognitions/{dep.alice_id}", headers=dep.headers("admin")).json()
    assert mine["status"] == "done" and admin == mine
    listed = httpx.get(dep.svc.url + "/v1/keys", headers=dep.headers("admin"))
    assert {k["name"] for k in listed.json()} == {"root", "alice", "bob", "mallory"}
    assert "iraas_" not in listed.text and "hash" not in listed.text  # neither keys nor their hashes


def test_the_load_generator_sends_a_key(dep: Deployment) -> None:
    images = sorted((IMAGENET / "images").iterdir())[:4]
    with_key = asyncio.run(
        run(Plan(dep.svc.url, images, {}, requests=4, concurrency=4, api="v1", key=dep.keys["recognize"]))
    )
    assert [r.error for r in with_key.records] == [None] * 4
    without = asyncio.run(run(Plan(dep.svc.url, images, {}, requests=4, concurrency=4, api="v1")))
    assert {r.error for r in without.records} == {"HTTP 401"}


def test_host_and_origin_refusals(dep: Deployment) -> None:
    url, alice = dep.svc.url, dep.headers("recognize")
    rebinding = httpx.get(url + "/healthz", headers={"Host": "attacker.example"})
    assert (rebinding.status_code, rebinding.json()["error"]) == (421, "misdirected")
    assert httpx.get(url + "/healthz", headers={"Host": f"localhost:{dep.svc.port}"}).status_code == 200
    refused, accepted = PHOTO.read_bytes() + b"refused", PHOTO.read_bytes() + b"accepted"  # distinct inputs
    for header in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
        files = [("files", (PHOTO.name, refused))]
        r = httpx.post(url + "/v1/recognitions?wait=false", files=files, headers=alice | header)
        assert (r.status_code, r.json()["error"]) == (403, "foreign_origin"), header
    files = [("files", (PHOTO.name, accepted))]
    same = httpx.post(url + "/v1/recognitions?wait=false", files=files, headers=alice | {"Origin": url})
    assert same.status_code == 202
    inputs = dep.svc.data_dir / "blobs" / "inputs"
    assert not (inputs / hashlib.sha256(refused).hexdigest()).exists()  # the refused ones stored nothing
    assert (inputs / hashlib.sha256(accepted).hexdigest()).exists()
    page = httpx.get(url + "/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "unsafe-inline" not in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "<script>" not in page.text  # no inline script


class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_quota_429_with_retry_after_then_recovery(tmp_path: Path) -> None:
    # In process, on the service's own clock: no worker is needed to be refused or queued.
    data = tmp_path / "data"
    key = create_key(data, "carol", "recognize", "--images-per-day", "3")
    settings = Settings(data_dir=data, requests_per_s=1, burst_s=3)  # a burst of 3 requests
    clock = _Clock()
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(
        make_app(settings, build(settings), clock=clock, monotonic=clock), base_url="http://127.0.0.1"
    ) as client:
        got = [client.get("/v1/me", headers=auth) for _ in range(4)]
        assert [r.status_code for r in got] == [200, 200, 200, 429]
        refused = got[-1]
        assert refused.json()["error"] == "rate_limited"
        assert refused.headers["ratelimit-policy"] == '"requests";q=3;w=3;qu="requests"'
        assert refused.headers["ratelimit"].startswith('"requests";r=0;t=')
        wait = int(refused.headers["retry-after"])
        assert wait == 1  # one request's worth of refill at 1/s
        clock.now += wait
        assert client.get("/v1/me", headers=auth).status_code == 200  # recovered

        clock.now += 3  # a full request bucket again; now the daily images (3 for this key)
        files = [("files", (PHOTO.name, PHOTO.read_bytes()))] * 2
        first = client.post("/v1/recognitions?wait=false", files=files, headers=auth)
        assert first.status_code == 202 and '"daily";r=1;' in first.headers["ratelimit"]
        policies = first.headers["ratelimit-policy"]
        assert policies.startswith('"requests";q=3;w=3;qu="requests", "images";') and '"daily";q=3;w=86400' in policies
        second = client.post("/v1/recognitions?wait=false", files=files, headers=auth)
        assert second.status_code == 429 and "daily quota of 3" in second.json()["detail"]
        assert int(second.headers["retry-after"]) <= 86_400
        one = client.post("/v1/recognitions?wait=false", files=files[:1], headers=auth)
        assert one.status_code == 202  # what is left of the day can still be spent


def test_a_key_revoked_through_one_web_process_is_refused_by_another(tmp_path: Path) -> None:
    # Two web processes' apps on one store, in process, on one clock: the second caches a key's
    # record for a second (KeyRing.cache_s), then reads it again.
    data = tmp_path / "data"
    admin = {"Authorization": f"Bearer {create_key(data, 'root', 'admin')}"}
    dave = {"Authorization": f"Bearer {create_key(data, 'dave')}"}
    settings, clock = Settings(data_dir=data), _Clock()
    apps = [make_app(settings, build(settings), clock=clock, monotonic=clock) for _ in range(2)]
    with (
        TestClient(apps[0], base_url="http://127.0.0.1") as one,
        TestClient(apps[1], base_url="http://127.0.0.1") as two,
    ):
        assert two.get("/v1/me", headers=dave).status_code == 200  # cached as valid there
        revoked = one.delete("/v1/keys/dave", headers=admin)
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        clock.now += 1.01  # past the second process's cache of dave's record
        assert two.get("/v1/me", headers=dave).status_code == 401
        assert one.get("/v1/me", headers=dave).status_code == 401
        # a key created through the second process works on the first
        made = two.post("/v1/keys", json={"name": "erin"}, headers=admin).json()
        assert made["scope"] == "recognize" and made["key"].startswith("iraas_")
        erin = {"Authorization": f"Bearer {made['key']}"}
        assert one.get("/v1/me", headers=erin).json()["name"] == "erin"


def test_course_clients_100_of_100_anonymously_while_keys_guard_the_rest(
    tmp_path: Path, classifier: Classifier
) -> None:
    data = tmp_path / "data"
    create_key(data, "root", "admin")
    svc = Service(data, max_workers=2, anonymous_course=True).start()
    try:
        files = sorted(COURSE.iterdir(), key=lambda f: int(f.stem.split("_")[1]))
        with ThreadPoolExecutor(100) as pool:
            answers = list(pool.map(functools.partial(course_post, svc.url), files))
        labels = [p.label for p in classifier.predict([f.read_bytes() for f in files])]
        assert answers == [f"{f.stem}:{label}" for f, label in zip(files, labels, strict=True)]
        files_field = [("files", (PHOTO.name, PHOTO.read_bytes()))]
        assert httpx.post(svc.url + "/v1/recognitions", files=files_field).status_code == 401  # only POST / opened
        assert httpx.get(svc.url + "/v1/cluster").status_code == 401
    finally:
        svc.stop()


def test_beyond_loopback_without_a_key_it_refuses_to_start(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "iraas.cli", "up", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "d")]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "requires API keys" in out.stderr and "iraas keys create admin --scope admin" in out.stderr


# -- in process: what needs no worker ------------------------------------------------------


def _app(tmp_path: Path, **changes: object) -> tuple[TestClient, dict[str, str]]:
    settings = Settings(data_dir=tmp_path, **changes)  # type: ignore[arg-type]
    store = build(settings)
    ring = KeyRing(store.blobs)
    keys = {"admin": ring.create("root", "admin"), "recognize": ring.create("alice", "recognize")}
    return TestClient(make_app(settings, store), base_url="http://127.0.0.1"), keys


def test_metrics_beyond_loopback_and_the_gallery_need_admin(tmp_path: Path) -> None:
    client, keys = _app(tmp_path, model="faces")
    with client:  # TestClient's peer is "testclient": not loopback, as a scraper from afar
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"X-API-Key": keys["recognize"]}).status_code == 403
        assert client.get("/metrics", headers={"X-API-Key": keys["admin"]}).status_code == 200
        for method, path in (("GET", "/v1/gallery"), ("POST", "/v1/gallery/Alice")):
            assert client.request(method, path).status_code == 401
            refused = client.request(method, path, headers={"X-API-Key": keys["recognize"]})
            assert (refused.status_code, refused.json()["error"]) == (403, "forbidden")
        assert client.get("/v1/gallery", headers={"X-API-Key": keys["admin"]}).status_code == 200


def test_no_auth_serves_everyone_as_admin_and_says_so_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(data_dir=tmp_path, host="0.0.0.0", auth="off")
    store = build(settings)
    KeyRing(store.blobs).create("root", "admin")
    with TestClient(make_app(settings, store), base_url="http://api.example") as client:
        assert client.get("/v1/me").json() == {"name": "anonymous", "scope": "admin", "auth": "off"}
        assert client.get("/v1/keys").status_code == 200
    assert "AUTHENTICATION IS OFF" in caplog.text


def test_anonymous_course_callers_share_one_rate_limit(tmp_path: Path) -> None:
    client, _ = _app(tmp_path, anonymous_course=True, requests_per_s=0.1, burst_s=20)  # 2 requests, then 10 s
    with client:
        photo = [("inputFile", (PHOTO.name, PHOTO.read_bytes()))]
        first = [client.post("/?timeout=0", files=photo) for _ in range(2)]
        assert [r.status_code for r in first] == [504, 504]  # queued (no worker here), not refused
        third = client.post("/?timeout=0", files=photo)
        assert (third.status_code, third.json()["error"]) == (429, "rate_limited")
        assert int(third.headers["retry-after"]) == 10


def test_keys_are_stored_only_as_hashes(tmp_path: Path) -> None:
    store = build(Settings(data_dir=tmp_path))
    ring = KeyRing(store.blobs)
    token = ring.create("alice", "recognize", images_per_day=10)
    assert token.startswith("iraas_") and len(token) == 49  # 256 random bits
    stored = b"".join(p.read_bytes() for p in (tmp_path / "blobs" / "keys").rglob("*") if p.is_file())
    assert token.encode() not in stored and token[6:].encode() not in stored
    assert store.blobs.list("keys/by-hash/") == [f"keys/by-hash/{digest(token)}.json"]
    assert ring.find(token) == Key(
        name="alice", scope="recognize", created_at=ring.all()[0].created_at, images_per_day=10
    )
    with pytest.raises(KeyRingError, match="exists"):
        ring.create("alice", "admin")
    with pytest.raises(KeyRingError, match="above 0"):
        ring.create("bob", "recognize", images_per_s=-1)
    ring.revoke("alice")
    again = ring.create("alice", "admin")  # a revoked key's name may be used again
    fresh = KeyRing(store.blobs)  # another process: no cache
    assert fresh.find(token).revoked_at is not None and fresh.find(again).scope == "admin"  # type: ignore[union-attr]
    assert fresh.find("iraas_" + "A" * 43) is None and fresh.find("not-a-key") is None


def _keys(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "iraas.cli", "keys", *args]
    if args[0] != "new":
        cmd += ["--data-dir", str(data_dir)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)


def test_a_key_from_a_secret_is_stored_once_however_often_a_pod_starts(tmp_path: Path) -> None:
    """Kubernetes: `iraas keys new` makes the key for a Secret; every web pod's start runs
    `keys create --token-env`, at once or one after another; the key works, stored once."""
    made = _keys(tmp_path, "new")
    token = made.stdout.strip()
    assert made.returncode == 0 and token.startswith("iraas_") and len(token) == 49
    assert KeyRing(build(Settings(data_dir=tmp_path)).blobs).all() == []  # `new` stores nothing
    env = {**os.environ, "ADMIN_KEY": token}
    args = ("create", "admin", "--scope", "admin", "--token-env", "ADMIN_KEY")
    with ThreadPoolExecutor(3) as pool:
        starts = list(pool.map(lambda _: _keys(tmp_path, *args, env=env), range(3)))
    assert [r.returncode for r in starts] == [0, 0, 0], [r.stderr for r in starts]
    assert token not in "".join(r.stdout + r.stderr for r in starts)  # never echoed
    ring = KeyRing(build(Settings(data_dir=tmp_path)).blobs)
    assert [(k.name, k.scope, k.active) for k in ring.all()] == [("admin", "admin", True)]
    assert ring.find(token) is not None and ring.find(token).name == "admin"  # type: ignore[union-attr]

    other = {**os.environ, "ADMIN_KEY": _keys(tmp_path, "new").stdout.strip()}
    refused = _keys(tmp_path, *args, env=other)  # the Secret changed, the old key still active
    assert refused.returncode == 2 and "exists" in refused.stderr
    assert _keys(tmp_path, "revoke", "admin").returncode == 0
    revoked = _keys(tmp_path, *args, env=env)  # a revoked key is not brought back
    assert revoked.returncode == 2 and "revoked" in revoked.stderr
    assert _keys(tmp_path, *args, env=other).returncode == 0  # the new one, once the old is revoked
    empty = _keys(tmp_path, *args, env={**os.environ, "ADMIN_KEY": ""})
    assert empty.returncode == 2 and "ADMIN_KEY" in empty.stderr


def test_token_bucket_arithmetic() -> None:
    b = Bucket(rate=2.0, capacity=4)
    assert b.take(4, now=0.0) == 0.0
    assert b.take(1, now=0.0) == pytest.approx(0.5)  # half a second for one token at 2/s
    assert b.take(1, now=0.5) == 0.0
    assert b.take(5, now=100.0) == math.inf  # more than it can ever hold
    assert b.level(100.0) == 4 and b.full_in(100.0) == 0


def test_the_daily_quota_holds_across_web_processes(tmp_path: Path) -> None:
    blobs = build(Settings(data_dir=tmp_path)).blobs
    limits = KeyLimits(requests_per_s=100, images_per_s=100, images_per_day=10, burst_s=10)
    one, two = Quotas(blobs), Quotas(blobs)
    assert one.images("alice", limits, 6).allowed
    one.sync()
    two.sync()  # the second process reads the first's count for the day
    assert not two.images("alice", limits, 5).allowed
    assert two.images("alice", limits, 4).allowed
    assert two.images("bob", limits, 10).allowed  # per key


@pytest.mark.parametrize(
    ("method", "host", "origin", "site", "foreign"),
    [
        ("POST", "127.0.0.1:8000", "http://127.0.0.1:8000", None, False),
        ("POST", "127.0.0.1:8000", "http://127.0.0.1:9000", None, True),  # another port, another origin
        ("POST", "127.0.0.1:8000", "https://evil.example", None, True),
        ("POST", "127.0.0.1:8000", "null", None, True),
        ("POST", "api.example", "https://api.example", None, False),  # behind a TLS balancer
        ("POST", "127.0.0.1:8000", None, "cross-site", True),
        ("POST", "127.0.0.1:8000", None, "same-origin", False),
        ("POST", "127.0.0.1:8000", None, None, False),  # curl, the course clients
        ("GET", "127.0.0.1:8000", "https://evil.example", None, False),  # reads are not state changes
        ("POST", "127.0.0.1:8000", "https://allowed.example", None, False),
    ],
)
def test_foreign_origin(method: str, host: str, origin: str | None, site: str | None, foreign: bool) -> None:
    assert foreign_origin(method, host, origin, site, frozenset({"https://allowed.example"})) is foreign


def test_host_allow_list_and_when_keys_are_required() -> None:
    assert allowed_hosts("127.0.0.1", ()) == {"localhost", "127.0.0.1", "::1"}
    assert allowed_hosts("0.0.0.0", ()) is None and allowed_hosts("0.0.0.0", ("api.example",)) == {"api.example"}
    assert allowed_hosts("127.0.0.1", ("*",)) is None
    assert [host_name(h) for h in ("[::1]:8000", "LOCALHOST:1", "a.example")] == ["::1", "localhost", "a.example"]
    assert not keys_required("auto", "127.0.0.1", any_keys=False)
    assert keys_required("auto", "127.0.0.1", any_keys=True) and keys_required("auto", "0.0.0.0", any_keys=False)
    assert not keys_required("off", "0.0.0.0", any_keys=True) and keys_required("required", "::1", any_keys=False)
