"""What each trip the store layer removed from one image's path cost, measured alone.

    python benchmarks/trips.py [--n 2000]

Each trip runs `n` times against the real embedded backends (SQLite queue file, directory
store) in a fresh temporary directory; printed: the median microseconds per image, before
(the trip as it was) and after (what replaced it, or nothing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iraas.config import Settings  # noqa: E402
from iraas.lifecycle.results import reply  # noqa: E402
from iraas.messages import ClusterStatus, Heartbeat, Result  # noqa: E402
from iraas.parts import Parts, build  # noqa: E402
from iraas.queues.sqlite import SqliteQueue  # noqa: E402
from tests.drafts import make_request  # noqa: E402


def _us(fn: Callable[[int], object], n: int) -> float:
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return 1e6 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    n = ap.parse_args().n
    with tempfile.TemporaryDirectory() as d:
        store = build(Settings(data_dir=Path(d)))
        result = Result(id="a" * 32, name="x.jpg", status="done", model="m", label="tench", confidence=0.9)
        body = result.to_json().encode()
        rows: list[tuple[str, float, float]] = []
        # 1. results GET before inference, on a first delivery (a miss)
        rows.append(("results GET on a first delivery", _us(lambda i: store.results.load_result(f"{i:032x}"), n), 0.0))
        # 2. the fsynced request record beside the input
        rows.append(("request record (fsynced put)", _us(lambda i: store.blobs.put(f"requests/{i}.json", body), n), 0))
        # 3. replies through a SQLite queue (send, receive, delete) vs a datagram
        q = SqliteQueue(Path(d) / "queue.db", "replies-x")

        def sqlite_reply(i: int) -> None:
            q.send(result.to_json())
            (m,) = q.receive(1)
            q.delete(m.receipt)

        inbox = store.replies.inbox("bench")
        rows.append(
            ("reply: SQLite queue → datagram", _us(sqlite_reply, n), _us(lambda i: _roundtrip(store, inbox), n))
        )
        inbox.close()
        # 4. the Result encoded three times → once
        three, once = _us(lambda i: [result.to_json() for _ in range(3)], n), _us(lambda i: result.to_json(), n)
        rows.append(("Result JSON encodings (3 → 1)", three, once))
        # 5. two forced heartbeat writes per batch (fsynced then) → none
        beat = Heartbeat(worker="w", pid=1, state="busy", at=0.0, started_at=0.0, current=["a" * 32])
        rows.append(
            ("2 forced heartbeats per batch", _us(lambda i: [_fsynced_beat(store, beat) for _ in range(2)], n), 0)
        )
        # 6. a status GET of a queued id: every heartbeat (20 workers) → the cluster status, cached
        for w in range(20):
            store.cluster.write_heartbeat(Heartbeat(worker=f"w{w}", pid=w, state="busy", at=0.0, started_at=0.0))
        store.cluster.publish_status(ClusterStatus())
        every_beat = _us(lambda i: store.cluster.heartbeats(), n // 4)
        published = _us(
            lambda i: store.results.status(store.ids.new_ids(1)[0], running=store.cluster.status().running), n // 4
        )
        rows.append(("status of a queued id (20 workers)", every_beat, published))
        # 7. one enqueue transaction per request vs group commit, 32 senders at once
        rows.append(("enqueue, 32 requests in flight", *_enqueue(store, n)))
        # 8. a visibility-extender thread started per batch → one for the worker's life
        rows.append(("visibility thread per batch", _us(lambda i: _thread(), n), 0.0))
    print(f"{'trip':<40} {'before µs':>10} {'after µs':>10}")
    for name, before, after in rows:
        print(f"{name:<40} {before:>10.1f} {after:>10.1f}")


def _roundtrip(store: Parts, inbox: object) -> None:
    reply(store.replies, "bench", Result(id="b" * 32, name="x", status="done", model="m"))
    inbox.receive(1.0)  # type: ignore[attr-defined]


def _fsynced_beat(store: object, beat: Heartbeat) -> None:
    store.blobs.put("heartbeats/w.json", json.dumps(beat.__dict__).encode())  # type: ignore[attr-defined]


def _thread() -> None:
    done = threading.Event()
    t = threading.Thread(target=done.wait)
    t.start()
    done.set()
    t.join()


def _enqueue(store: Parts, n: int) -> tuple[float, float]:
    """Per request, wall time for 32 threads sending one message each: one transaction each
    (`send`) vs the store's group commit."""
    req = make_request(store, rid="0" * 32, digest="0" * 64, name="x", model="m", reply_to="", submitted_at=0.0)
    out = []
    for send in (lambda: store.requests.send(req.to_json()), lambda: store.results.enqueue([req])):  # type: ignore[attr-defined]
        rounds = []
        for _ in range(max(n // 100, 5)):
            barrier = threading.Barrier(32)

            def one(send: Callable[[], object] = send, barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                send()

            threads = [threading.Thread(target=one) for _ in range(32)]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            rounds.append((time.perf_counter() - t) / 32)
        out.append(1e6 * statistics.median(rounds))
    store.requests.purge()  # type: ignore[attr-defined]
    return out[0], out[1]


if __name__ == "__main__":
    main()
