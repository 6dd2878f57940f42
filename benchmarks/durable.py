"""What iraas's durable path costs an image by itself: no HTTP, no framework, no model.

    python benchmarks/durable.py [--images 2000] [--groups 1 4] [--durability process|power]

The calls an image makes that a plain server without a queue does not, on the embedded
backends (SQLite queue and record files, the directory store), one after the other in one
process: the web tier's (the upload's SHA-256 and header checks, an id, the intake: dedup
read, input file, one queue transaction per group), then a worker's (claim, input read, result
stored, reply datagram, fsync, delete, dedup entry), then the web tier's reply read. `--groups`:
images per request and per claim (a worker takes up to 4 at once; concurrent requests share a
queue transaction). Printed: CPU (user and system, this process) an image, by step, and what
creating a file costs in the data directory's folder (on this machine it has read from 7 to
500 µs by hour: the intake makes one per image). The process hops, wake-ups and HTTP around
these calls are measured by `overhead.py` and `versus.py`; this is the part no web stack can
remove without giving up what iraas promises (an accepted image survives any process's crash;
with `--durability power`, a power cut too: the input and the queue's commit fsynced).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iraas.config import Settings  # noqa: E402
from iraas.config.loading import DURABILITIES  # noqa: E402
from iraas.lifecycle.results import reply_many  # noqa: E402
from iraas.messages import Request, Result  # noqa: E402
from iraas.parts import Parts, build  # noqa: E402
from iraas.replies import Inbox  # noqa: E402
from iraas.web.intake import Intake, Item, check  # noqa: E402
from iraas.web.upload import Spool  # noqa: E402

JPEG = (ROOT.parent / "shared/datasets/imagenet-sample/images/n01440764_tench.JPEG").read_bytes()
T = TypeVar("T")


class Steps:
    """CPU seconds by step."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], T]) -> T:
        t = time.process_time()
        out = fn()
        self.spent[name] = self.spent.get(name, 0.0) + time.process_time() - t
        return out


def one_group(web: Parts, worker: Parts, inbox: Inbox, settings: Settings, first: int, size: int, s: Steps) -> None:
    """`size` byte-distinct images from upload to the reply read, each step timed."""
    intake = Intake(settings, web.results, "durable")
    items = []
    for i in range(first, first + size):
        data = JPEG + i.to_bytes(8, "big")
        items.append(s.run("upload hashed", lambda data=data: Item("a.jpg", Spool.of(data))))
    for item in items:
        s.run("header checks", lambda item=item: check(item, settings))
    ids = s.run("ids", lambda: web.ids.new_ids(size, "bench"))
    s.run("intake (dedup read, input file, queue)", lambda: intake.submit(items, ids))
    msgs = s.run("claim", lambda: worker.requests.receive(size, 0, 10))
    assert len(msgs) == size, len(msgs)
    reqs = [Request.from_json(m.body) for m in msgs]
    s.run("input read", lambda: worker.results.load_inputs(reqs))
    answers = [Result.of(r, "done", timings={}, worker="w", label="tench", confidence=0.8) for r in reqs]
    done = s.run("result stored", lambda: worker.results.finish_many(list(zip(reqs, answers, strict=True)), False))
    s.run("reply sent", lambda: reply_many(worker.replies, [(r.reply_to, a) for r, a in zip(reqs, done, strict=True)]))
    s.run("results fsynced", lambda: worker.results.flush([r.id for r in reqs]))
    s.run("requests deleted", lambda: worker.requests.delete_batch([m.receipt for m in msgs]))
    s.run("dedup entries", lambda: worker.results.remember(list(zip(reqs, done, strict=True))))
    got: list[str] = []
    while len(got) < size:
        got += s.run("reply read", lambda: inbox.receive(1.0))


def measure(images: int, size: int, durability: str) -> tuple[dict[str, float], float]:
    """µs of CPU an image by step, and what creating a file in the inputs' folder costs (µs)."""
    with tempfile.TemporaryDirectory() as d:
        settings = Settings(data_dir=Path(d), durability=durability)
        web, worker = build(settings), build(settings)  # as two processes hold them
        inbox = web.replies.inbox("durable")
        steps = Steps()
        try:
            for first in range(0, images - size + 1, size):
                one_group(web, worker, inbox, settings, first, size, steps)
        finally:
            inbox.close()
        create = _create_us(Path(settings.blob_root) / "inputs")
    done = images - images % size
    return {k: 1e6 * v / done for k, v in steps.spent.items()}, create


def _create_us(folder: Path, n: int = 200) -> float:
    """The median CPU to create a file in `folder`, as the intake does for each image (kept:
    deleting them would make the next ones dearer on a file system without a journal)."""
    times = []
    for i in range(n):
        t = time.process_time()
        os.close(os.open(folder / f".probe-{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        times.append(time.process_time() - t)
    return 1e6 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--groups", type=int, nargs="+", default=[1, 4], help="images per request and claim")
    ap.add_argument("--durability", choices=DURABILITIES, default=Settings().durability)
    args = ap.parse_args()
    rows = {size: measure(args.images, size, args.durability) for size in args.groups}
    print(f"{'µs of CPU an image':<36}" + "".join(f"{f'group of {g}':>12}" for g in rows))
    for step in next(iter(rows.values()))[0]:
        print(f"{step:<36}" + "".join(f"{r[step]:>12.1f}" for r, _ in rows.values()))
    print(f"{'all':<36}" + "".join(f"{sum(r.values()):>12.1f}" for r, _ in rows.values()))
    print(f"{'  of it, creating a file there':<36}" + "".join(f"{c:>12.1f}" for _, c in rows.values()))


if __name__ == "__main__":
    main()
