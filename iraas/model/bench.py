"""`iraas bench model`: the in-process ceiling of decode + preprocess + inference.

Every process loads its own model and reads the images into memory first, so disk and
start-up are not measured; they wait at a barrier, run the same number of batches, and the
wall time from the barrier to the last process finishing gives the throughput.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path

from ..messages import FACES
from .classifier import StageTimes
from .recognizer import Recognizer, gallery_from_path, load_recognizer


@dataclass(frozen=True)
class BenchResult:
    images: int
    seconds: float
    procs: int
    batch: int
    times: StageTimes

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    def report(self) -> str:
        n = max(self.times.images, 1)
        ms = {k: 1000 * getattr(self.times, k) / n for k in ("decode", "preprocess", "inference")}
        return (
            f"{self.images} images in {self.seconds:.2f} s with {self.procs} process(es), batch {self.batch}: "
            f"{self.images_per_s:.1f} img/s\n"
            f"per image, per process: decode {ms['decode']:.2f} ms, preprocess {ms['preprocess']:.2f} ms, "
            f"inference {ms['inference']:.2f} ms"
        )


def _worker(
    model: str | None,
    files: list[str],
    batch: int,
    rounds: int,
    threads: int,
    barrier: Barrier,
    out: mp.Queue[StageTimes],
    gallery: bytes | None = None,
    choice: tuple[str, str] = ("", ""),
) -> None:
    recognizer = _recognizer(model, threads, gallery, choice)
    data = [Path(f).read_bytes() for f in files]
    recognizer.classify(data[:batch])  # warm-up: first run allocates and plans
    recognizer.times = StageTimes()
    barrier.wait()
    for _ in range(rounds):
        for i in range(0, len(data), batch):
            recognizer.classify(data[i : i + batch])
    out.put(recognizer.times)


def _recognizer(model: str | None, threads: int, gallery: bytes | None, choice: tuple[str, str]) -> Recognizer:
    if gallery is None:
        return load_recognizer(model, threads=threads, runtime=choice[0], precision=choice[1])
    from .faces import Gallery

    loaded = Gallery.from_bytes(gallery)
    return load_recognizer(model, threads=threads, gallery=lambda: loaded, runtime=choice[0], precision=choice[1])


def run_bench(
    model: str | None,
    files: list[Path],
    batch: int = 8,
    procs: int = 0,
    threads: int = 1,
    rounds: int = 1,
    gallery: str | None = None,
    choice: tuple[str, str] = ("", ""),
) -> BenchResult:
    """`choice`: (runtime, precision), "" for the model's own."""
    procs = procs or os.cpu_count() or 1
    # Build the ONNX cache / enrol the gallery once, before the processes race for it.
    gallery_bytes = gallery_from_path(gallery).to_bytes() if model == FACES and gallery else None  # type: ignore[attr-defined]
    if model != FACES:
        _recognizer(model, threads, None, choice)  # builds the cache; refuses what cannot run here
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs + 1)
    out: mp.Queue[StageTimes] = ctx.Queue()
    names = [str(f) for f in files]
    workers = [
        ctx.Process(target=_worker, args=(model, names, batch, rounds, threads, barrier, out, gallery_bytes, choice))
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    barrier.wait()
    t0 = time.perf_counter()
    total = StageTimes()
    for _ in workers:
        total.add(out.get())
    elapsed = time.perf_counter() - t0
    for w in workers:
        w.join()
    return BenchResult(total.images, elapsed, procs, batch, total)
