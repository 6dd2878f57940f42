"""Hostile input against a real service (`iraas up` on loopback, a real worker).

Every case is a real HTTP request. For each: the status, the JSON error code, that nothing was
stored or queued for the refused request, and that a good image sent right after is answered
right. Limits are set small here so that each case costs little; docs/security.md has the
defaults.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from .conftest import IMAGENET
from .images import encode, png_bomb
from .imageserver import image_server
from .service import Service

TENCH = (IMAGENET / "images" / "n01440764_tench.JPEG").read_bytes()
KIB, MIB = 1024, 1024 * 1024
LIMITS = {
    "max_files": 5,
    "max_file_bytes": 1 * MIB,
    "max_request_bytes": 3 * MIB,
    "max_json_bytes": 4 * KIB,
    "header_timeout_s": 2,
    "body_timeout_s": 2,
    "url_timeout_s": 3,
    "url_allow": "127.0.0.1",  # the test's own image server; 127.0.0.2 and the rest stay refused
}


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("hostile")
    s = Service(root / "data", min_workers=1, max_workers=1, **LIMITS).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    folder = tmp_path_factory.mktemp("served")
    (folder / "tench.jpg").write_bytes(TENCH)
    with image_server(folder) as p:
        yield p


def footprint(svc: Service) -> tuple[int, int, int]:
    """Stored inputs, stored results, messages in the queue file."""
    inputs = len(list((svc.data_dir / "blobs" / "inputs").glob("*")))
    results = len(svc.blobs.list("results/"))
    with sqlite3.connect(svc.data_dir / "queue.db", timeout=30) as db:
        (messages,) = db.execute("SELECT COUNT(*) FROM messages").fetchone()
    return inputs, results, messages


def good_image_is_answered(svc: Service) -> None:
    r = httpx.post(svc.url + "/v1/recognitions", files={"files": ("tench.jpg", TENCH)}, timeout=60)
    assert r.status_code == 200, r.text
    assert (r.json()[0]["status"], r.json()[0]["label"]) == ("done", "tench")
    # the worker replies, then deletes the message: the next footprint must not see it half-way
    svc.wait_for(lambda: footprint(svc)[2] == 0, timeout=30, every=0.05)


def _png(w: int, h: int) -> bytes:
    return encode(Image.new("L", (w, h)), "PNG")


def _bmp_truncated() -> bytes:
    return encode(Image.new("RGB", (64, 64), (200, 10, 10)), "BMP")[:-500]


def _files(*items: tuple[str, bytes]) -> dict[str, Any]:
    return {"files": list(("files", (name, data)) for name, data in items)}


def _json(body: Any) -> dict[str, Any]:
    return {"content": json.dumps(body), "headers": {"content-type": "application/json"}}


def _url(url: str) -> dict[str, Any]:
    return _json({"url": url})


# (name, method, path, request kwargs, status, code)
CASES: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    ("empty file", "POST", "/v1/recognitions", _files(("e.jpg", b"")), 400, "empty"),
    ("truncated jpeg", "POST", "/v1/recognitions", _files(("t.jpg", TENCH[: len(TENCH) // 2])), 422, "truncated"),
    ("truncated bmp", "POST", "/v1/recognitions", _files(("t.bmp", _bmp_truncated())), 422, "truncated"),
    ("pixel bomb", "POST", "/v1/recognitions", _files(("bomb.png", png_bomb())), 422, "too_many_pixels"),
    ("a side too long", "POST", "/v1/recognitions", _files(("strip.png", _png(25_000, 1_500))), 422, "too_many_pixels"),
    ("a thin strip", "POST", "/v1/recognitions", _files(("strip.png", _png(10_000, 10))), 422, "bad_shape"),
    ("html", "POST", "/v1/recognitions", _files(("x.jpg", b"<!doctype html><p>hi")), 415, "unsupported_format"),
    (
        "svg",
        "POST",
        "/v1/recognitions",
        _files(("x.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>")),
        415,
        "unsupported_format",
    ),
    ("eps", "POST", "/v1/recognitions", _files(("x.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n")), 415, "unsupported_format"),
    ("random bytes", "POST", "/v1/recognitions", _files(("x.jpg", bytes(range(256)) * 4)), 415, "not_an_image"),
    (
        "one bad file fails the request whole",
        "POST",
        "/v1/recognitions",
        _files(("good.jpg", TENCH), ("bad.jpg", TENCH[:3000])),
        422,
        "truncated",
    ),
    (
        "too many files",
        "POST",
        "/v1/recognitions",
        _files(*[(f"{i}.jpg", TENCH) for i in range(6)]),
        413,
        "too_many_files",
    ),
    (
        "file over the size limit",
        "POST",
        "/v1/recognitions",
        _files(("big.jpg", TENCH + b"\0" * MIB)),
        413,
        "too_large",
    ),
    (
        "body over the request limit",
        "POST",
        "/v1/recognitions",
        _files(*[(f"{i}.jpg", TENCH + bytes(900 * KIB)) for i in range(4)]),
        413,
        "request_too_large",
    ),
    ("course route, empty file", "POST", "/", {"files": {"inputFile": ("e.jpg", b"")}}, 400, "empty"),
    ("course route, no file", "POST", "/", {"files": {"other": ("a.jpg", TENCH)}}, 400, "missing_field"),
    (
        "not multipart",
        "POST",
        "/v1/recognitions",
        {"content": b"hello", "headers": {"content-type": "text/plain"}},
        415,
        "bad_content_type",
    ),
    (
        "malformed multipart",
        "POST",
        "/v1/recognitions",
        {
            "content": b'--b\r\nContent-Disposition: form-data; name="files"; filename="a"\r\n\r\nxx\r\n--c--',
            "headers": {"content-type": "multipart/form-data; boundary=b"},
        },
        400,
        "bad_multipart",
    ),
    (
        "invalid json",
        "POST",
        "/v1/recognitions",
        {"content": b"{", "headers": {"content-type": "application/json"}},
        400,
        "bad_json",
    ),
    (
        "json nested 100,000 deep",
        "POST",
        "/v1/recognitions",
        {"content": b"[" * 100_000, "headers": {"content-type": "application/json"}},
        413,
        "request_too_large",
    ),
    (
        "json nested deep, small",
        "POST",
        "/v1/recognitions",
        {"content": b"[" * 2000 + b"]" * 2000, "headers": {"content-type": "application/json"}},
        400,
        "bad_json",
    ),
    ("json without a url", "POST", "/v1/recognitions", _json({"link": "x"}), 400, "missing_field"),
    (
        "json over its limit",
        "POST",
        "/v1/recognitions",
        _json({"urls": ["http://example.com/" + "a" * 5000]}),
        413,
        "request_too_large",
    ),
    ("ftp url", "POST", "/v1/recognitions", _url("ftp://example.com/a.jpg"), 400, "bad_url"),
    ("file url", "POST", "/v1/recognitions", _url("file:///etc/passwd"), 400, "bad_url"),
    ("nul byte in url", "POST", "/v1/recognitions", _url("http://example.com/a\x00.jpg"), 400, "bad_url"),
    (
        "64-character dns label",
        "POST",
        "/v1/recognitions",
        _url(f"http://{'a' * 64}.example.com/a.jpg"),
        400,
        "bad_url",
    ),
    ("loopback", "POST", "/v1/recognitions", _url("http://127.0.0.2/a.jpg"), 403, "refused_address"),
    (
        "metadata service",
        "POST",
        "/v1/recognitions",
        _url("http://169.254.169.254/latest/meta-data/"),
        403,
        "refused_address",
    ),
    (
        "ipv4-compatible ipv6 loopback",
        "POST",
        "/v1/recognitions",
        _url("http://[::127.0.0.1]/"),
        403,
        "refused_address",
    ),
    ("ipv4-translated loopback", "POST", "/v1/recognitions", _url("http://[::ffff:0:7f00:1]/"), 403, "refused_address"),
    ("nat64 metadata", "POST", "/v1/recognitions", _url("http://[64:ff9b::a9fe:a9fe]/"), 403, "refused_address"),
    ("local nat64 private", "POST", "/v1/recognitions", _url("http://[64:ff9b:1::a00:1]/"), 403, "refused_address"),
    ("6to4 metadata", "POST", "/v1/recognitions", _url("http://[2002:a9fe:a9fe::1]/"), 403, "refused_address"),
    ("site-local", "POST", "/v1/recognitions", _url("http://[fec0::1]/"), 403, "refused_address"),
    ("timeout nan", "POST", "/v1/recognitions?timeout=nan", _files(("t.jpg", TENCH)), 400, "bad_parameter"),
    ("timeout negative", "POST", "/v1/recognitions?timeout=-1", _files(("t.jpg", TENCH)), 400, "bad_parameter"),
    ("wait maybe", "POST", "/v1/recognitions?wait=maybe", _files(("t.jpg", TENCH)), 400, "bad_parameter"),
    ("id with a trailing newline", "GET", "/v1/recognitions/" + "a" * 32 + "%0A", {}, 400, "bad_id"),
    ("unknown route", "GET", "/v2/everything", {}, 404, "not_found"),
    ("wrong method", "DELETE", "/v1/recognitions", {}, 405, "method_not_allowed"),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_refused_whole_with_a_json_code_and_nothing_kept(
    svc: Service, method: str, path: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    before = footprint(svc)
    kwargs = dict(kwargs)
    files = kwargs.pop("files", None)
    r = httpx.request(method, svc.url + path, files=files, timeout=60, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"] == code and r.json()["request_id"] == r.headers["x-request-id"]
    assert footprint(svc) == before
    good_image_is_answered(svc)


def test_url_userinfo_query_and_fragment_are_not_kept(svc: Service, port: int) -> None:
    url = f"http://user:secret@127.0.0.1:{port}/tench.jpg?token=abc#frag"
    r = httpx.post(svc.url + "/v1/recognitions", json={"url": url}, timeout=60)
    assert r.status_code == 200, r.text
    (got,) = r.json()
    assert (got["label"], got["name"]) == ("tench", f"http://127.0.0.1:{port}/tench.jpg")
    again = httpx.get(svc.url + got["location"], timeout=10).text
    assert "secret" not in again and "token" not in again


def test_a_url_that_trickles_is_cut_at_its_deadline(svc: Service, port: int) -> None:
    before = footprint(svc)
    start = time.monotonic()
    r = httpx.post(svc.url + "/v1/recognitions", json={"url": f"http://127.0.0.1:{port}/slow"}, timeout=60)
    took = time.monotonic() - start
    assert (r.status_code, r.json()["error"]) == (422, "unreachable_url")
    assert took < 15  # url_timeout_s is 3: the whole fetch, not each read of a byte a second
    assert footprint(svc) == before
    good_image_is_answered(svc)


def _raw(svc: Service, data: bytes, wait_s: float = 10) -> bytes:
    """Send `data` and then nothing; what the server answers before it closes."""
    with socket.create_connection(("127.0.0.1", svc.port), timeout=wait_s) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


@pytest.mark.parametrize(
    ("sent", "status", "code"),
    [
        (b"POST /v1/recognitions HTTP/1.1\r\nHost: localhost\r\nX-Half: ", b"408", b"header_timeout"),
        (
            b"POST /v1/recognitions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n",
            b"408",
            b"body_timeout",
        ),
        (b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", b"431", b"headers_too_large"),
        (
            b"POST /v1/recognitions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2000000000000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n",
            b"413",
            b"request_too_large",
        ),
    ],
    ids=["half the headers", "half the body", "huge headers", "2 TB declared"],
)
def test_slow_or_oversized_connections_are_closed(svc: Service, sent: bytes, status: bytes, code: bytes) -> None:
    before = footprint(svc)
    start = time.monotonic()
    answer = _raw(svc, sent)
    assert time.monotonic() - start < 8  # header_timeout_s and body_timeout_s are 2
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == status and json.loads(body)["error"] == code.decode()
    assert footprint(svc) == before
    good_image_is_answered(svc)


def test_broken_jpeg_scan_data_is_a_corrupt_failure_not_a_grey_picture(svc: Service) -> None:
    sos = TENCH.find(b"\xff\xda")
    start = sos + 2 + int.from_bytes(TENCH[sos + 2 : sos + 4], "big")
    blank = TENCH[:start] + bytes(len(TENCH) - start - 2) + b"\xff\xd9"
    missing = TENCH[:start] + b"\xff\xd9"
    r = httpx.post(
        svc.url + "/v1/recognitions", files=_files(("blank.jpg", blank), ("missing.jpg", missing))["files"], timeout=60
    )
    assert r.status_code == 200, r.text
    assert [(g["status"], g["error"]) for g in r.json()] == [("failed", "corrupt"), ("failed", "corrupt")]


def test_every_id_shape_but_ours_is_refused(svc: Service) -> None:
    checks: list[tuple[str, int]] = [("A" * 32, 400), ("a" * 31, 400), ("a" * 33, 400), ("a" * 32, 404)]
    for rid, status in checks:
        r = httpx.get(f"{svc.url}/v1/recognitions/{rid}", timeout=10)
        assert r.status_code == status and r.json()["error"] in ("bad_id", "not_found")


def test_past_the_connection_cap_a_client_still_uploading_reads_its_503_not_a_reset(tmp_path: Path) -> None:
    """Closing a refused connection at once, while its upload still arrives, makes the kernel
    answer with a reset that can destroy the 503 before the client reads it (11 of 60 here
    before the lingering close). Two uploads stalled mid-body hold the cap of 2."""
    svc = Service(tmp_path / "data", max_workers=0, max_connections=2, body_timeout_s=600, linger_s=60).start()
    held = []
    try:
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", svc.port))
            sock.sendall(b"POST /v1/recognitions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nhalf")
            held.append(sock)
        head = b"POST /v1/recognitions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        upload = head + b"Content-Length: 4194304\r\n\r\n" + bytes(4 << 20)
        answers = []
        for _ in range(30):
            with socket.create_connection(("127.0.0.1", svc.port), timeout=60) as sock:
                sock.sendall(upload)
                out = b""
                while chunk := sock.recv(65536):  # a reset raises ConnectionResetError here
                    out += chunk
            status, _, body = out.partition(b"\r\n\r\n")
            answers.append((status.split(b" ")[1], json.loads(body)["error"]))
        assert answers == [(b"503", "overloaded")] * 30
        assert "Invalid HTTP request" not in svc.output()  # the refused request's body is not parsed as one
    finally:
        for sock in held:
            sock.close()
        svc.stop()
