"""What each of the web tier's own steps costs a request under load: each switched off in turn.

    python benchmarks/ledger.py [--rounds 6] [--requests 500] [--concurrency 32]

The in-process harness of `benchmarks/overhead.py` (iraas's web tier as an ASGI app, a real
worker in another process, a model that answers at once), `--concurrency` requests in flight;
in each round every variant runs once (everything on, or one step left out), each round
starting with another. Printed:
the web process's CPU a request (medians over the rounds) and each step's share, the difference
with everything on. A step's cost under load is not its cost alone: the intake's threads and the
event loop share one GIL, and each release and retake of it (hashing a chunk, a SQLite call, a
file written) costs switches, which a step alone on a thread does not show.

Leaving a step out changes what the service does (no input written: the worker answers
`input_missing`), so this measures cost, not a way to run: it names where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import benchmarks.overhead as overhead  # noqa: E402
from iraas.config import Settings  # noqa: E402
from iraas.lifecycle.results import Results  # noqa: E402
from iraas.parts import build, make_app  # noqa: E402
from iraas.web import upload  # noqa: E402
from iraas.web.metrics import Metrics  # noqa: E402
from iraas.web.service import WebService  # noqa: E402

_names = itertools.count()


class _Unhashed:
    """Stands in for hashlib.sha256: a digest unique to each upload, nothing computed."""

    def __init__(self) -> None:
        self._digest = f"{next(_names):064x}"

    def update(self, data: bytes) -> None:
        pass

    def hexdigest(self) -> str:
        return self._digest


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


STEPS: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] = {
    "everything": contextlib.nullcontext,
    "the upload's SHA-256": lambda: mock.patch.object(upload, "hashlib", SimpleNamespace(sha256=_Unhashed)),
    "the image header checks": lambda: mock.patch.object(WebService, "check_all", lambda self, items: None),
    "the dedup look-up": lambda: mock.patch.object(Results, "answer_from_cache", lambda self, req: None),
    "the input's file": lambda: mock.patch.object(Results, "put_input", lambda self, data, digest: None),
    "the log line": _quiet,
    "the metrics": lambda: mock.patch.object(Metrics, "observe", lambda self, result: None),
}


async def _rounds(app: Any, worker: int, args: argparse.Namespace) -> dict[str, list[float]]:
    cpu: dict[str, list[float]] = {name: [] for name in STEPS}
    first = 0
    async with app.router.lifespan_context(app):
        await overhead._concurrent(app, 200, 10**9, args.concurrency, worker)  # warm-up
        names = list(STEPS)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # each first in turn
                with STEPS[name]():
                    got = await overhead._concurrent(app, args.requests, first, args.concurrency, worker, strict=False)
                first += args.requests
                cpu[name].append(got[f"c{args.concurrency}_cpu_ms"])
            print(f"round {r + 1}: " + ", ".join(f"{v[-1]:.3f}" for v in cpu.values()), flush=True)  # STEPS' order
    return cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--requests", type=int, default=500, help="per variant and round")
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        settings = Settings(data_dir=Path(d))
        build(settings)
        worker = multiprocessing.get_context("fork").Process(target=overhead._work, args=(settings,), daemon=True)
        worker.start()
        try:
            cpu = asyncio.run(_rounds(make_app(settings, build(settings)), worker.pid or 0, args))
        finally:
            worker.terminate()
            worker.join()
    whole = statistics.median(cpu["everything"])
    print(f"\nweb process CPU a request, {args.concurrency} in flight, medians over {args.rounds} rounds:")
    print(f"  {'everything':<32} {whole:6.3f} ms")
    for name, values in list(cpu.items())[1:]:
        without = statistics.median(values)
        print(f"  {'without ' + name:<32} {without:6.3f} ms   the step: {whole - without:+.3f} ms")


if __name__ == "__main__":
    main()
