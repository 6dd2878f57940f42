"""The SQLite queue shared by real processes, some of them killed with SIGKILL."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
import time
from pathlib import Path

from iraas.queues.sqlite import SqliteQueue

ctx = mp.get_context("spawn")


def _consume(db: str, out: str, idle_s: float, ready: object) -> None:
    q = SqliteQueue(db, "jobs")
    ready.wait()  # type: ignore[attr-defined]
    last = time.monotonic()
    with open(out, "a") as f:
        while time.monotonic() - last < idle_s:
            msgs = q.receive(10, wait_s=0.5, visibility_s=60)
            if msgs:
                last = time.monotonic()
                f.write("".join(m.body + "\n" for m in msgs))
                f.flush()
                q.delete_batch([m.receipt for m in msgs])


def test_four_consumers_process_every_message_once(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    q = SqliteQueue(db, "jobs")
    bodies = [f"job-{i}" for i in range(2000)]
    outs = [tmp_path / f"out{i}" for i in range(4)]
    # Production starts once every consumer is up (a spawned process takes ~1 s to import):
    # otherwise the first one up may drain everything before the others poll.
    ready = ctx.Barrier(len(outs) + 1)
    procs = [ctx.Process(target=_consume, args=(str(db), str(o), 3.0, ready)) for o in outs]
    for p in procs:
        p.start()
    ready.wait(timeout=60)
    for i in range(0, len(bodies), 10):  # produced while the consumers run
        q.send_batch(bodies[i : i + 10])
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    seen = [line for o in outs if o.exists() for line in o.read_text().splitlines()]
    assert sorted(seen) == sorted(bodies)  # none lost, none twice (visibility never expired)
    assert sum(1 for o in outs if o.exists() and o.read_text()) >= 2  # the work was shared
    assert q.depth().backlog == 0


def _hold_and_hang(db: str, ready: object) -> None:
    q = SqliteQueue(db, "jobs")
    got = q.receive(5, wait_s=5, visibility_s=2)
    assert len(got) == 5
    ready.set()  # type: ignore[attr-defined]
    time.sleep(600)


def test_killed_consumer_messages_come_back_after_visibility_timeout(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    q = SqliteQueue(db, "jobs")
    ids = q.send_batch([f"m{i}" for i in range(5)])
    ready = ctx.Event()
    p = ctx.Process(target=_hold_and_hang, args=(str(db), ready))
    p.start()
    assert ready.wait(60)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    assert q.depth().in_flight == 5
    back: list[str] = []
    deadline = time.monotonic() + 20
    while len(back) < 5 and time.monotonic() < deadline:
        for m in q.receive(10, wait_s=5):
            assert m.receive_count == 2
            back.append(m.id)
            q.delete(m.receipt)
    assert sorted(back) == sorted(ids)


def _produce_forever(db: str, ready: object) -> None:
    q = SqliteQueue(db, "jobs")
    n = 0
    while True:
        q.send_batch([f"b{n}-{i}" for i in range(10)])
        n += 1
        if n == 20:
            ready.set()  # type: ignore[attr-defined]


def test_killed_producer_leaves_whole_batches_and_an_intact_database(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    SqliteQueue(db, "jobs")
    ready = ctx.Event()
    p = ctx.Process(target=_produce_forever, args=(str(db), ready))
    p.start()
    assert ready.wait(60)
    time.sleep(0.3)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        bodies = [r[0] for r in conn.execute("SELECT body FROM messages")]
    batches: dict[str, int] = {}
    for body in bodies:
        batch = body.split("-")[0]
        batches[batch] = batches.get(batch, 0) + 1
    assert len(batches) >= 20
    assert set(batches.values()) == {10}  # every batch all or nothing
    q = SqliteQueue(db, "jobs")  # and the queue still works
    assert len(q.receive(10, wait_s=1)) == 10
