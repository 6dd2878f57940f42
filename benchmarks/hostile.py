"""Hostile-input figures for docs/security.md and docs/benchmarks.md.

    python benchmarks/hostile.py [--clients 20]

1. Peak RSS of the web tier (the `iraas up` process; no worker runs) while `--clients` clients
   each send the largest request the defaults allow: 50 MiB in three valid JPEGs (20 + 20 +
   10 MiB of noise), `?wait=false`. Sampled from /proc every 10 ms.
2. How long the batch-mates of a poison image take to be answered: (a) an image whose decoder
   raises (a fuzzed AVIF) in one request with three photos; (b) a worker killed with SIGKILL
   while it holds a batch of four (a native crash): the time from the kill to the last answer,
   with `visibility_s` 30 (the old default) and 10 (the new one).
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iraas.queues.sqlite import SqliteQueue  # noqa: E402
from tests.images import crashing_avif  # noqa: E402
from tests.service import Service  # noqa: E402

PHOTOS = sorted((ROOT.parent / "shared" / "datasets" / "imagenet-sample" / "images").iterdir())
MIB = 1024 * 1024


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _noise_jpeg(target: int, seed: int) -> bytes:
    """A valid JPEG just under `target` bytes (noise compresses badly: size ~ pixels)."""
    rng = np.random.default_rng(seed)

    def encode(side: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
        return buf.getvalue()

    side = int(1000 * (target / len(encode(1000))) ** 0.5)  # bytes grow with the pixel count
    while len(data := encode(side)) > target:
        side = int(side * 0.995)
    return data


def peak_rss(tmp: Path, clients: int) -> None:
    # the largest request the defaults allow: max_request_bytes (50 MiB) less the multipart framing
    files = [_noise_jpeg(20 * MIB - 1024, 1), _noise_jpeg(20 * MIB - 1024, 2), _noise_jpeg(10 * MIB - 8 * 1024, 3)]
    total = sum(len(f) for f in files)
    print(f"request: {len(files)} JPEGs, {total / MIB:.1f} MiB in all; {clients} clients at once")
    svc = Service(tmp / "rss", max_workers=0).start()
    assert svc.proc is not None
    pid = svc.proc.pid
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(_rss_mib(pid))
            time.sleep(0.01)

    def one(i: int) -> int:
        body = [("files", (f"{i}-{j}.jpg", f)) for j, f in enumerate(files)]
        return httpx.post(svc.url + "/v1/recognitions?wait=false", files=body, timeout=300).status_code

    try:
        time.sleep(1)
        idle = _rss_mib(pid)
        threading.Thread(target=sample, daemon=True).start()
        start = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            codes = list(pool.map(one, range(clients)))
        took = time.monotonic() - start
        done.set()
        time.sleep(0.5)
        after = _rss_mib(pid)
    finally:
        svc.stop()
    print(f"answers: {sorted(set(codes))}; {took:.1f} s for all")
    print(f"web-tier RSS: idle {idle:.0f} MiB, peak {max(samples):.0f} MiB, after {after:.0f} MiB")


def poison_in_batch(tmp: Path) -> None:
    svc = Service(tmp / "poison", min_workers=1, max_workers=1, batch_size=4).start()
    try:
        poison = crashing_avif(PHOTOS[0].read_bytes())
        files = [("files", (p.name, p.read_bytes())) for p in PHOTOS[10:13]] + [("files", ("poison.avif", poison))]
        httpx.post(svc.url + "/v1/recognitions", files=[files[0]], timeout=60)  # warm
        start = time.monotonic()
        got = httpx.post(svc.url + "/v1/recognitions", files=files, timeout=60).json()
        took = time.monotonic() - start
    finally:
        svc.stop()
    states = [f"{g['name']}: {g['status']} {g.get('label') or g.get('error')}" for g in got]
    print(f"decoder exception beside 3 photos: all answered in {took * 1000:.0f} ms ({'; '.join(states)})")


def killed_holding_a_batch(tmp: Path, visibility_s: int) -> None:
    svc = Service(
        tmp / f"kill{visibility_s}",
        min_workers=1,
        max_workers=1,
        batch_size=4,
        visibility_s=visibility_s,
        heartbeat_s=0.2,
    ).start()
    queue = SqliteQueue(svc.data_dir / "queue.db", "requests")
    try:
        httpx.post(svc.url + "/v1/recognitions", files={"files": ("w.jpg", PHOTOS[0].read_bytes())}, timeout=60)
        photos = PHOTOS[20:60]
        answered: list[float] = []
        killed: list[float] = []

        def one(p: Path) -> None:
            r = httpx.post(svc.url + "/v1/recognitions", files={"files": (p.name, p.read_bytes())}, timeout=180)
            assert r.json()[0]["status"] == "done", r.text
            answered.append(time.monotonic())

        with ThreadPoolExecutor(len(photos)) as pool:
            futures = [pool.submit(one, p) for p in photos]
            while not (queue.depth().in_flight and svc.worker_pids()):
                time.sleep(0.005)
            for pid in svc.worker_pids().values():
                os.kill(pid, signal.SIGKILL)
            killed.append(time.monotonic())
            for f in futures:
                f.result()
    finally:
        svc.stop()
    print(
        f"worker killed holding a batch (visibility_s {visibility_s}): "
        f"all 40 answered right, the last {max(answered) - killed[0]:.1f} s after the kill"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=20)
    args = ap.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        peak_rss(tmp, args.clients)
        poison_in_batch(tmp)
        for visibility in (30, 10):  # the old default beside the new one, in one run
            killed_holding_a_batch(tmp, visibility)


if __name__ == "__main__":
    main()
