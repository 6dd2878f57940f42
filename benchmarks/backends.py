"""The embedded backends against PostgreSQL, side by side in one run.

    python benchmarks/backends.py [--rounds 3] [--messages 4000] [--requests 400]

1. Queue throughput: 4 processes, each repeating send one → receive one → delete it, on one
   SQLite file, then on one PostgreSQL database (a private server on this machine, fsync on, as
   a deployment runs it); rounds interleaved, medians printed.
2. The service at saturation: `iraas up` with 2 always-on workers on the embedded backends, and
   the same with the queue and the blobs on PostgreSQL (`IRAAS_QUEUE`, `IRAAS_BLOBS`), measured
   as benchmarks/versus.py measures (byte-distinct requests at c=32 and c=100, one at a time,
   server CPU per image); rounds interleaved, medians and the ratio printed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.versus import SAMPLE, interleaved  # noqa: E402
from iraas.files import image_files  # noqa: E402
from tests.pgserver import PgServer  # noqa: E402
from tests.service import Service  # noqa: E402

ctx = mp.get_context("spawn")
PROCS = 4


def _queue(kind: str, where: str, name: str) -> object:
    if kind == "sqlite":
        from iraas.queues.sqlite import SqliteQueue

        return SqliteQueue(where, name)
    from iraas.pg import Database
    from iraas.queues.postgres import PostgresQueue

    return PostgresQueue(Database(where, max_size=2), name)


def _cycle(kind: str, where: str, name: str, n: int, ready: object, start: object) -> None:
    q = _queue(kind, where, name)
    q.depth()  # type: ignore[attr-defined]  # connected (a pool, a file) before the clock starts
    ready.wait()  # type: ignore[attr-defined]
    start.wait()  # type: ignore[attr-defined]
    done = 0
    while done < n:
        q.send("x" * 200)  # type: ignore[attr-defined]
        msgs = q.receive(1, wait_s=1)  # type: ignore[attr-defined]
        if msgs:
            q.delete(msgs[0].receipt)  # type: ignore[attr-defined]
        done += len(msgs)


def queue_throughput(kind: str, where: str, total: int, round_: int) -> float:
    """Messages a second through send → receive → delete, PROCS processes at once."""
    start, ready = ctx.Event(), ctx.Barrier(PROCS + 1)
    name = f"bench-{round_}"
    ps = [ctx.Process(target=_cycle, args=(kind, where, name, total // PROCS, ready, start)) for _ in range(PROCS)]
    for p in ps:
        p.start()
    ready.wait()
    t = time.perf_counter()
    start.set()
    for p in ps:
        p.join()
    return total / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=4000)
    ap.add_argument("--requests", type=int, default=400, help="per service throughput run")
    args = ap.parse_args()
    pg = PgServer(fsync=True).start()
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            _queues(args, pg, tmp)
            _services(args, pg, tmp)
    finally:
        pg.remove()


def _queues(args: argparse.Namespace, pg: PgServer, tmp: Path) -> None:
    from iraas.pg import Database

    url = pg.database("queuebench")
    Database(url).migrate()
    got: dict[str, list[float]] = {"sqlite": [], "postgres": []}
    for r in range(args.rounds):
        for kind, where in (("sqlite", str(tmp / "queue.db")), ("postgres", url)):
            got[kind].append(queue_throughput(kind, where, args.messages, r))
            print(f"round {r + 1} queue {kind}: {got[kind][-1]:.0f} messages/s", flush=True)
    s, p = (statistics.median(got[k]) for k in ("sqlite", "postgres"))
    print(
        f"\nqueue, {PROCS} processes, median of {args.rounds}: SQLite {s:.0f}/s, PostgreSQL {p:.0f}/s ({p / s:.2f})\n"
    )


def _services(args: argparse.Namespace, pg: PgServer, tmp: Path) -> None:
    files = image_files([SAMPLE])
    url = pg.database("servicebench")
    svcs = {
        "embedded": Service(tmp / "embedded", min_workers=2, max_workers=2),
        "postgres": Service(tmp / "pg", env={"IRAAS_QUEUE": url, "IRAAS_BLOBS": url}, min_workers=2, max_workers=2),
    }
    assert pg.proc is not None
    med = interleaved(svcs, args.rounds, files, args.requests, tmp, db_pid=pg.proc.pid)
    e, p = med["embedded"], med["postgres"]
    print(f"\nmedians over {args.rounds} interleaved rounds   embedded   PostgreSQL   PostgreSQL/embedded")
    for key, label in (
        ("c32", "throughput c=32 (img/s)"),
        ("c100", "throughput c=100 (img/s)"),
        ("p50_ms", "one at a time, p50 (ms)"),
        ("cpu_ms", "server CPU per image, c=32 (ms)"),
        ("db_cpu_ms", "PostgreSQL's CPU per image, c=32 (ms)"),
    ):
        ratio = "" if key == "db_cpu_ms" else f"{p[key] / e[key]:>14.2f}"
        print(f"{label:<34} {e[key]:>9.1f} {p[key]:>12.1f} {ratio}")
    print("(the server CPU column is iraas's processes; PostgreSQL's own is its row, nearly none when embedded)")


if __name__ == "__main__":
    main()
