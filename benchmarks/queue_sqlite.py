"""The embedded SQLite queue: throughput and long-poll wake-up latency.

    python benchmarks/queue_sqlite.py [--messages 2000]

Throughput: each process repeats send one → receive one → delete it (three transactions),
all processes on one database file. Wake-up: a process long-polls an empty queue; another
sends; the time from just before the send to the receiver holding the message.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

from iraas.queues.sqlite import SqliteQueue

ctx = mp.get_context("spawn")


def _cycle(db: str, name: str, n: int, batch: int, start: object) -> None:
    q = SqliteQueue(db, name)
    start.wait()  # type: ignore[attr-defined]
    done = 0
    while done < n:
        q.send_batch(["x" * 200] * batch) if batch > 1 else q.send("x" * 200)
        msgs = q.receive(batch, wait_s=1)
        if msgs:
            q.delete_batch([m.receipt for m in msgs])
        done += len(msgs)


def throughput(db: Path, procs: int, total: int, batch: int = 1) -> float:
    start = ctx.Event()
    per = total // procs
    ps = [ctx.Process(target=_cycle, args=(str(db), f"bench-{procs}-{batch}", per, batch, start)) for _ in range(procs)]
    for p in ps:
        p.start()
    time.sleep(1.0)  # let every process import and connect
    t = time.perf_counter()
    start.set()
    for p in ps:
        p.join()
    return per * procs / (time.perf_counter() - t)


def _listen(db: str, n: int, out: object, ready: object) -> None:
    q = SqliteQueue(db, "wake")
    for _ in range(n):
        ready.set()  # type: ignore[attr-defined]
        (msg,) = q.receive(1, wait_s=20)
        out.put(time.time() - float(msg.body))  # type: ignore[attr-defined]
        q.delete(msg.receipt)


def wake_latency(db: Path, n: int = 50) -> list[float]:
    out, ready = ctx.Queue(), ctx.Event()
    q = SqliteQueue(db, "wake")
    p = ctx.Process(target=_listen, args=(str(db), n, out, ready))
    p.start()
    lat = []
    for _ in range(n):
        ready.wait()
        ready.clear()
        time.sleep(0.05)  # the receiver is inside its long poll now
        q.send(repr(time.time()))
        lat.append(out.get())
    p.join()
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "queue.db"
        for procs in (1, 4):
            rate = throughput(db, procs, args.messages)
            print(f"{procs} process(es), send+receive+delete one at a time: {rate:,.0f} messages/s")
        rate = throughput(db, 4, args.messages * 5, batch=10)
        print(f"4 processes, batches of 10: {rate:,.0f} messages/s")
        lat = wake_latency(db)
        print(
            f"long-poll wake-up after a send: median {1000 * statistics.median(lat):.2f} ms, "
            f"max {1000 * max(lat):.2f} ms over {len(lat)}"
        )


if __name__ == "__main__":
    main()
