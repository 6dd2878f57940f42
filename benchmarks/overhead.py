"""What iraas itself costs a request, the model aside: against the plain baseline, both in process.

    python benchmarks/overhead.py [--requests 500] [--rounds 5] [--concurrency 32]

Both get a model that answers at once, so what is left is each server's own path: the baseline's
route (`benchmarks/baseline.py`: multipart form, the thread pool, the JSON answer) against
iraas's web tier (checks, the input stored, the queue, the reply waited for) and a real worker
in another process (claim, input read, result stored and fsynced, reply, delete, dedup entry).
Requests go straight to each ASGI app, without HTTP (uvicorn is the same for both), one at a
time, the two taking turns request by request. Printed: the median time of a request, the CPU
it took (iraas: its web process and its worker; the baseline: its process; a process's CPU
includes its idle threads' share), and the median of the paired differences; then each app
with `--concurrency` requests in flight: requests a second and CPU per request (what bounds
throughput when the cores are full); medians over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import benchmarks.baseline as baseline  # noqa: E402
from iraas.config import Settings  # noqa: E402
from iraas.imaging import ImageError  # noqa: E402
from iraas.model.classifier import Label, Prediction, StageTimes  # noqa: E402
from iraas.parts import build, make_app, make_worker  # noqa: E402

JPEG = (ROOT.parent / "shared/datasets/imagenet-sample/images/n01440764_tench.JPEG").read_bytes()
_BOUNDARY = b"iraas-overhead-boundary"


class Instant:
    """A recognizer that answers every image at once (tench, 0.8)."""

    name = "efficientnet-lite0"
    version = ""

    def __init__(self) -> None:
        self.spec = SimpleNamespace(name=self.name)
        self.times = StageTimes()

    def refresh(self) -> None:
        pass

    def enroll(self, person: str, image: bytes, source: str) -> tuple[bytes, str | None]:
        raise NotImplementedError

    def classify(self, images: Sequence[bytes], top_k: int = 5) -> list[Prediction | ImageError]:
        return [Prediction((Label("tench", 0, 0.8),)) for _ in images]


def _body(n: int) -> bytes:
    """A multipart body of one image, byte-distinct (nothing is answered from a cache)."""
    head = b'\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    return b"--" + _BOUNDARY + head + JPEG + n.to_bytes(8, "big") + b"\r\n--" + _BOUNDARY + b"--\r\n"


async def _call(app: Any, body: bytes, strict: bool = True) -> bytes:
    """The answer's body; `strict`: asserting it is a tench's (else any answer will do)."""
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"content-type", b"multipart/form-data; boundary=" + _BOUNDARY),
        (b"content-length", str(len(body)).encode()),
    ]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/recognitions", "raw_path": b"/v1/recognitions", "query_string": b"", "root_path": "",
        "headers": headers, "client": ("127.0.0.1", 5555), "server": ("127.0.0.1", 8000), "state": {},
    }  # fmt: skip
    sent: list[dict[str, Any]] = []
    given = False

    async def receive() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert not strict or (sent[0]["status"] == 200 and b"tench" in sent[1]["body"]), sent
    return bytes(sent[1]["body"])


def _cpu_s(pid: int | None = None) -> float:
    if pid is None:
        own = resource.getrusage(resource.RUSAGE_SELF)
        return own.ru_utime + own.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _round(apps: dict[str, Any], n: int, first: int, worker: int) -> dict[str, dict[str, float]]:
    """`n` requests to each app, taking turns request by request (the machine's speed wanders
    over seconds: each pair meets the same); each app's median time and CPU per request (the
    CPU of a process is the whole round's, shared out), and the median paired difference."""
    lat: dict[str, list[float]] = {name: [] for name in apps}
    cpu = dict.fromkeys(apps, 0.0)
    wcpu = 0.0
    for i in range(n):
        for name, app in apps.items():
            body = _body(first + 2 * i + (name == "iraas"))
            c, w = _cpu_s(), _cpu_s(worker) if name == "iraas" else 0.0
            t = time.perf_counter()
            await _call(app, body)
            lat[name].append(time.perf_counter() - t)
            cpu[name] += _cpu_s() - c
            if name == "iraas":
                wcpu += _cpu_s(worker) - w
    out = {name: {"ms": 1000 * statistics.median(v), "cpu_ms": 1000 * cpu[name] / n} for name, v in lat.items()}
    out["iraas"]["worker_cpu_ms"] = 1000 * wcpu / n
    out["iraas"]["minus_baseline_ms"] = 1000 * statistics.median(
        a - b for a, b in zip(lat["iraas"], lat["baseline"], strict=True)
    )
    return out


async def _concurrent(
    app: Any, n: int, first: int, concurrency: int, worker: int, strict: bool = True
) -> dict[str, float]:
    """`n` requests with `concurrency` in flight: requests a second, and CPU per request (for
    iraas, its worker's apart)."""
    todo = iter(range(first, first + n))

    async def client() -> None:
        for i in todo:
            await _call(app, _body(i), strict)

    c, w = _cpu_s(), _cpu_s(worker) if worker else 0.0
    t = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    out = {f"c{concurrency}_per_s": n / (time.perf_counter() - t), f"c{concurrency}_cpu_ms": 1000 * (_cpu_s() - c) / n}
    if worker:
        out[f"c{concurrency}_worker_cpu_ms"] = 1000 * (_cpu_s(worker) - w) / n
    return out


def _work(settings: Settings) -> None:
    make_worker(build(settings), Instant(), settings, "overhead").run()


async def _measure(iraas: Any, base: Any, worker: int, args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    rows: dict[str, list[dict[str, float]]] = {"baseline": [], "iraas": []}
    apps = {"baseline": base, "iraas": iraas}
    n, c = args.requests, args.concurrency
    async with iraas.router.lifespan_context(iraas):
        await _round(apps, 20, 10**9, worker)  # warm-up
        for r in range(args.rounds):
            got = await _round(apps, n, 4 * r * n, worker)
            if c:
                got["baseline"] |= await _concurrent(base, n, (4 * r + 2) * n, c, 0)
                got["iraas"] |= await _concurrent(iraas, n, (4 * r + 3) * n, c, worker)
            for name, m in got.items():
                rows[name].append(m)
            print(f"round {r + 1}: " + "; ".join(f"{k} {_line(v[-1])}" for k, v in rows.items()), flush=True)
    return rows


def _line(m: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in m.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=500, help="per round and app")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=32, help="then as many in flight (0: not)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        settings = Settings(data_dir=Path(d))
        build(settings)  # the data directory made before the worker starts
        worker = multiprocessing.get_context("fork").Process(target=_work, args=(settings,), daemon=True)
        worker.start()
        try:
            baseline._state["clf"] = Instant()  # type: ignore[assignment]
            app = make_app(settings, build(settings))
            rows = asyncio.run(_measure(app, baseline.app, worker.pid or 0, args))
        finally:
            worker.terminate()
            worker.join()
    print(f"\nmedians over {args.rounds} rounds of {args.requests} requests each, in process:")
    for name, ms in rows.items():
        print(f"  {name:<9} " + _line({k: statistics.median(m[k] for m in ms) for k in ms[0]}))


if __name__ == "__main__":
    main()
