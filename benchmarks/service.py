"""The service against its ceiling, the course workloads, latency, cold start, spike, RSS.

    python benchmarks/service.py [--only NAME ...] [--plot docs/spike.png]

Each scenario starts its own `iraas up` on loopback (a fresh data directory, so no result is
answered from an earlier run) and prints its figures. The load generator runs in this process
and shares the machine's two cores with the service: that is part of what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iraas.files import image_files  # noqa: E402
from iraas.loadgen.labels import read_labels  # noqa: E402
from iraas.loadgen.run import Plan, run  # noqa: E402
from iraas.model.bench import run_bench  # noqa: E402
from tests.service import Service  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets"
SAMPLE = DATA / "imagenet-sample" / "images"
COURSE = DATA / "cse546-imagenet-100" / "images"
FACES = DATA / "cse546-faces" / "face_images_1000"


def _service(tmp: Path, **settings: object) -> Service:
    """A service at rest: started, and its worker template (if any) ready to fork."""
    svc = Service(tmp / f"data-{time.monotonic_ns()}", **settings).start()
    if settings.get("warm_start") is not False:
        svc.ready_template()
    return svc


def _warm_rss_mb(svc: Service) -> float:
    return float((svc.cluster().get("warm") or {}).get("rss_bytes", 0)) / 2**20


WARM = {"warm template": {}, "new interpreter (before)": {"warm_start": False}}


def _distinct_copies(files: list[Path], copies: int, folder: Path) -> list[Path]:
    """Byte-distinct copies (a trailing byte after the JPEG end marker), so that dedup does
    not answer the repeats: every request costs a real inference."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for c in range(copies):
        for f in files:
            target = folder / f"{f.stem}-{c}{f.suffix}"
            target.write_bytes(f.read_bytes() + bytes([c]) * c)
            out.append(target)
    return out


def _load(svc: Service, files: list[Path], **plan: object) -> dict[str, object]:
    report = asyncio.run(run(Plan(svc.url, files, {}, **plan)))  # type: ignore[arg-type]
    return report.summary() | {"_report": report}


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _cpu_split(svc: Service) -> dict[str, float]:
    assert svc.proc is not None
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "web": _cpu_s(svc.proc.pid),
        "workers": sum(_cpu_s(p) for p in svc.worker_pids().values()),
        "load generator": own.ru_utime + own.ru_stime,
    }


def _workers(svc: Service) -> int:
    return len([w for w in svc.cluster()["workers"] if w["state"] != "stopping"])


def _time_to_min(svc: Service, minimum: int) -> float:
    t0 = time.monotonic()
    svc.wait_for(lambda: _workers(svc) <= minimum, timeout=120, every=0.05)
    return time.monotonic() - t0


def ceiling(tmp: Path) -> None:
    files = image_files([SAMPLE])
    ceil = run_bench(None, files, batch=8, procs=2)
    print(f"ceiling: iraas bench model, 2 processes: {ceil.images_per_s:.1f} img/s")
    burst = _distinct_copies(files, 2, tmp / "burst")
    svc = _service(tmp, min_workers=2, max_workers=2)
    try:
        svc.wait_for(lambda: _workers(svc) == 2 and len(svc.worker_pids()) == 2, timeout=60)
        before = _cpu_split(svc)
        s = _load(svc, burst, requests=len(burst), concurrency=64, api="v1")
        after = _cpu_split(svc)
        rate = float(s["throughput_per_s"])  # type: ignore[arg-type]
        print(
            f"service: {s['answered']}/{s['sent']} answered, {rate:.1f} img/s with 2 warm workers, "
            f"ratio {rate / ceil.images_per_s:.2f}"
        )
        per = {k: 1000 * (after[k] - before[k]) / len(burst) for k in after}
        print(
            "CPU per image: "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in per.items())
            + f"; the ceiling spends {2000 / ceil.images_per_s:.1f} ms of CPU per image"
        )
    finally:
        svc.stop()


def course(tmp: Path) -> None:
    labels = read_labels(DATA / "cse546-faces" / "labels-1000.csv")
    assert labels
    for name, folder, n in (("course 100 (imagenet-100)", COURSE, 100), ("course 1000 (faces, plain)", FACES, 1000)):
        for start, extra in WARM.items():
            svc = _service(tmp, scale_in_after_s=2, **extra)
            try:
                files = image_files([folder])[:n]
                s = _load(svc, files, requests=n, concurrency=n, api="course")
                lat: dict[str, float] = s["latency_s"]  # type: ignore[assignment]
                back = _time_to_min(svc, 0)
                print(
                    f"{name}, {start}: {s['answered']}/{s['sent']} answered from zero workers; latency mean "
                    f"{lat['mean']:.3f} s, p99 {lat['p99']:.3f} s, max {lat['max']:.3f} s; back to 0 workers "
                    f"{back:.1f} s after the last answer (idle period 2 s)"
                    + (f"; errors {s['errors']}" if s["errors"] else "")
                )
            finally:
                svc.stop()


def course_int8(tmp: Path) -> None:
    """Course 100 from zero workers, fp32 and the int8 model (`iraas quantize`, calibrated on the
    shared ImageNet photos, not on the course images), rounds interleaved."""
    from iraas.model.builtin import resolve_model
    from iraas.model.quantize import quantize

    spec = tmp / "lite0-int8.toml"
    quantize(resolve_model(None), image_files([SAMPLE])[1::5], spec)
    files = image_files([COURSE])[:100]
    for _ in range(3):
        for name, extra in (("fp32", {}), ("int8", {"model": str(spec)})):
            svc = _service(tmp, scale_in_after_s=2, **extra)
            try:
                s = _load(svc, files, requests=100, concurrency=100, api="course")
                lat: dict[str, float] = s["latency_s"]  # type: ignore[assignment]
                print(
                    f"course 100, {name}, warm template: {s['answered']}/{s['sent']} answered from zero workers; "
                    f"latency mean {lat['mean']:.3f} s, p99 {lat['p99']:.3f} s"
                )
            finally:
                svc.stop()


def single(tmp: Path) -> None:
    svc = _service(tmp, min_workers=1, max_workers=1)
    try:
        svc.wait_for(lambda: svc.worker_pids(), timeout=60)
        files = image_files([SAMPLE])[:60]
        overhead, total, model = [], [], []
        client = httpx.Client()  # one client: building one costs ~20 ms (TLS context), not ours to count
        for i, f in enumerate(files):
            t = time.perf_counter()
            r = client.post(svc.url + "/v1/recognitions", files={"files": (f.name, f.read_bytes())}, timeout=60)
            elapsed = time.perf_counter() - t
            if i < 10:
                continue  # warm-up
            inference = r.json()[0]["timings"]["inference"]
            total.append(elapsed)
            model.append(inference)
            overhead.append(elapsed - inference)
        print(
            f"single request, warm worker: p50 latency {1000 * statistics.median(total):.1f} ms, model "
            f"{1000 * statistics.median(model):.1f} ms, p50 overhead {1000 * statistics.median(overhead):.1f} ms"
        )
    finally:
        svc.stop()


def _wait_idle(svc: Service) -> None:
    svc.wait_for(lambda: _workers(svc) == 0 and not svc.worker_pids(), timeout=60)


def cold(tmp: Path) -> None:
    """Zero workers → first answer, seen by a client (one connection, made beforehand) and by
    the service (the result's `total`: from the request's arrival to its result)."""
    for start, extra in WARM.items():
        svc = _service(tmp, scale_in_after_s=1, **extra)
        try:
            seen, served = [], []
            with httpx.Client() as client:
                client.get(svc.url + "/healthz")
                for f in image_files([SAMPLE])[:5]:
                    _wait_idle(svc)
                    t = time.perf_counter()
                    r = client.post(svc.url + "/v1/recognitions", files={"files": (f.name, f.read_bytes())}, timeout=60)
                    seen.append(time.perf_counter() - t)
                    served.append(r.json()[0]["timings"]["total"])
            rss = f"; template RSS {_warm_rss_mb(svc):.0f} MB" if start == "warm template" else ""
            print(
                f"cold start, {start} (zero workers → first answer): client "
                + ", ".join(f"{x:.3f}" for x in seen)
                + " s; in the service "
                + ", ".join(f"{x:.3f}" for x in served)
                + f" s; median {statistics.median(seen):.3f} / {statistics.median(served):.3f} s{rss}"
            )
        finally:
            svc.stop()


def spike(tmp: Path, plot: str | None) -> None:
    svc = _service(tmp, scale_in_after_s=3)
    try:
        files = _distinct_copies(image_files([SAMPLE]), 1, tmp / "spike")
        s = _load(svc, files, requests=400, concurrency=1000, rate=60.0, pattern="spike", duration=20.0, api="v1")
        last = time.monotonic()
        svc.wait_for(lambda: _workers(svc) == 0, timeout=60, every=0.05)
        delay = time.monotonic() - last - 3
        report = s["_report"]
        peak = max((c.workers for c in report.cluster), default=0)  # type: ignore[attr-defined]
        print(
            f"spike: {s['answered']}/{s['sent']} answered, peak {peak} workers; back to 0 workers "
            f"{delay:+.2f} s after the 3 s idle period ended"
        )
        if plot:
            report.plot(plot)  # type: ignore[attr-defined]
    finally:
        svc.stop()


def rss(tmp: Path) -> None:
    svc = _service(tmp, min_workers=2, max_workers=2)
    try:
        svc.wait_for(lambda: len(svc.worker_pids()) == 2, timeout=60)
        _load(svc, image_files([SAMPLE])[:200], requests=200, concurrency=16, api="v1")
        for wid, pid in svc.worker_pids().items():
            status = Path(f"/proc/{pid}/status").read_text()
            kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
            print(f"worker {wid} RSS after 100+ images: {kb / 1024:.0f} MB")
    finally:
        svc.stop()


SCENARIOS: dict[str, Callable[[Path], None]] = {
    "ceiling": ceiling,
    "course": course,
    "course-int8": course_int8,
    "single": single,
    "cold": cold,
    "rss": rss,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=[*SCENARIOS, "spike"], help="run only these scenarios")
    ap.add_argument("--plot", help="PNG for the spike scenario")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name in args.only or [*SCENARIOS, "spike"]:
            if name == "spike":
                spike(tmp, args.plot)
            else:
                SCENARIOS[name](tmp)


if __name__ == "__main__":
    main()
