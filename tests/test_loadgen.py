"""The load generator against a tiny fake server whose answers we choose."""

from __future__ import annotations

import asyncio
import http.server
import itertools
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from iraas.loadgen.labels import read_labels
from iraas.loadgen.run import Plan, _open_loop, rate_at, run

from .conftest import DATASETS

# The fake's answers: test_0..test_9; test_3 answered wrong, test_4 with HTTP 500.
TRUTH = {f"test_{i}": f"label{i}" for i in range(10)}


class _Fake(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hits = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        stem = Path(re.search(rb'filename="([^"]+)"', body).group(1).decode()).stem  # type: ignore[union-attr]
        _Fake.hits += 1
        if stem == "test_4":
            return self._send(500, b"boom", "text/plain")
        label = "wrong" if stem == "test_3" else TRUTH[stem]
        if self.path.startswith("/v1/recognitions"):
            return self._send(200, json.dumps([{"status": "done", "label": label}]).encode(), "application/json")
        self._send(200, f"{stem}:{label}".encode(), "text/plain")

    def do_GET(self) -> None:
        body = {"workers": [{"state": "busy"}, {"state": "idle"}], "queue": {"visible": 3, "in_flight": 2}}
        self._send(200, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def fake() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("imgs")
    for stem in TRUTH:
        (folder / f"{stem}.JPEG").write_bytes(b"\xff\xd8 fake jpeg " + stem.encode())
    return sorted(folder.iterdir())


@pytest.mark.parametrize("api", ["course", "v1"])
def test_closed_loop_counts_and_verifies_every_answer(fake: str, images: list[Path], api: str) -> None:
    report = asyncio.run(run(Plan(fake, images, TRUTH, requests=30, concurrency=5, api=api)))
    s = report.summary()
    assert (s["sent"], s["answered"], s["correct"], s["wrong"]) == (30, 27, 24, 3)
    assert s["errors"] == {"HTTP 500": 3}
    assert {w["name"] for w in s["wrong_answers"]} == {"test_3.JPEG"}
    lat = s["latency_s"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert s["throughput_per_s"] > 0 and report.cluster and report.cluster[0].workers == 2
    assert report.cluster[0].backlog == 5


def test_open_loop_paces_arrivals() -> None:
    """20 arrivals at 40/s, 25 ms apart, whatever the machine's speed: on a clock of the
    test's own, which a sleep moves on."""
    now = [0.0]
    arrivals: list[float] = []

    async def sleep(seconds: float) -> None:
        await asyncio.sleep(0)  # the requests started so far go first, at the time they were due
        now[0] += seconds

    async def record(image: Path) -> None:
        arrivals.append(now[0])

    plan = Plan("u", [Path("a.jpg")], {}, requests=20, concurrency=50, rate=40.0)
    asyncio.run(_open_loop(plan, itertools.cycle(plan.images), record, 0.0, float("inf"), lambda: now[0], sleep))
    assert arrivals == pytest.approx([i / 40 for i in range(20)])


def test_an_open_loop_run_sends_every_request(fake: str, images: list[Path]) -> None:
    report = asyncio.run(run(Plan(fake, images, TRUTH, requests=20, concurrency=50, rate=40.0)))
    assert len(report.records) == 20 and report.summary()["answered"] == 18  # test_3 answers 500


def test_duration_bounds_the_run(fake: str, images: list[Path]) -> None:
    report = asyncio.run(run(Plan(fake, images, TRUTH, requests=10_000, concurrency=2, rate=20.0, duration=0.5)))
    assert 5 <= len(report.records) <= 15


def test_schedules() -> None:
    plan = Plan("u", [], {}, rate=100.0, pattern="step")
    assert [rate_at(plan, t, 40) for t in (1, 11, 21, 31)] == [25.0, 50.0, 75.0, 100.0]
    spike = Plan("u", [], {}, rate=100.0, pattern="spike")
    assert [rate_at(spike, t, 100) for t in (10, 50, 90)] == [10.0, 100.0, 10.0]


def test_reads_the_three_label_formats() -> None:
    faces = read_labels(DATASETS / "cse546-faces" / "labels-100.csv")
    assert len(faces) == 100 and faces["test_00"]
    course = read_labels(DATASETS / "cse546-imagenet-100" / "classification_results.csv")
    assert course["test_0"] == "bathtub"
    sample = read_labels(DATASETS / "imagenet-sample" / "labels.csv")
    assert sample["n01440764_tench"] == "tench" and len(sample) == 500


def test_command_writes_report_and_plot(fake: str, images: list[Path], tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("".join(f"{stem}.JPEG,{label}\n" for stem, label in TRUTH.items()))
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "iraas.cli",
            "loadgen",
            fake,
            "--images",
            str(images[0].parent),
            "--labels",
            str(labels),
            "--requests",
            "10",
            "--concurrency",
            "10",
            "--out",
            str(out),
            "--plot",
            str(png),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1  # one wrong answer and one error: not a clean run
    assert "sent 10, answered 9, correct 8, wrong 1" in proc.stdout
    assert "wrong: test_3.JPEG → wrong" in proc.stdout
    assert json.loads(out.read_text())["summary"]["errors"] == {"HTTP 500": 1}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
