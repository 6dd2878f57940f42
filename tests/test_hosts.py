"""iraas across hosts over a real network: five Linux network namespaces the tests make (a
database host running a real PostgreSQL server, two web hosts, two worker hosts) on a bridge of
their own, every process started as a user types it (`iraas up --role web|workers` with the
URLs in its environment). Links are cut by setting a host's link down."""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from iraas.model.classifier import Classifier
from iraas.pg import Database

from .conftest import DATASETS, IMAGENET
from .lan import Lan
from .pgserver import PASSWORD, PgServer
from .service import course_post
from .test_service import expected

COURSE = DATASETS / "cse546-imagenet-100" / "images"
PHOTOS = sorted((IMAGENET / "images").iterdir())
PORT = 8000
# Short enough that a cut-off host's messages come back within seconds (a live worker extends
# its visibility every third of it); the rest as shipped.
SETTINGS = ["--max-workers", "2", "--visibility-s", "4", "--scale-in-after-s", "2", "--heartbeat-stale-s", "6"]


@dataclass
class Deployment:
    lan: Lan
    pg: PgServer
    url: str
    root: Path
    procs: dict[str, Any] = field(default_factory=dict)

    def start(self, host: str, role: str) -> None:
        data = self.root / host
        data.mkdir(exist_ok=True)
        args = [sys.executable, "-m", "iraas.cli", "up", "--role", role, "--data-dir", str(data), *SETTINGS]
        if role == "web":
            args += ["--host", "0.0.0.0", "--port", str(PORT), "--no-auth"]
        env = {"IRAAS_QUEUE": self.url, "IRAAS_BLOBS": self.url}
        self.procs[host] = self.lan.run(host, args, self.root / f"{host}.log", env)

    def web(self, host: str) -> str:
        return f"http://{self.lan.hosts[host]}:{PORT}"

    def log(self, host: str) -> str:
        return (self.root / f"{host}.log").read_text(errors="replace")

    def cluster(self, via: str) -> dict[str, Any]:
        return dict(httpx.get(self.web(via) + "/v1/cluster", timeout=5).json())

    def holder(self, via: str) -> str:
        """The host whose controller does the deployment's duties now (from its pid)."""
        by = str(self.cluster(via).get("by", ""))
        pid = int(by.rsplit(":", 1)[1]) if ":" in by else -1
        return next((h for h, p in self.procs.items() if p.pid == pid), "")


def _until(what: Callable[[], bool], why: str, within_s: float = 120, every: float = 0.2) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            if what():
                return
        except httpx.HTTPError:
            pass  # a host not answering yet (starting) or any more (cut off): ask again
        assert time.monotonic() < deadline, f"never: {why}"
        time.sleep(every)


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    lan = Lan()
    pg: PgServer | None = None
    dep: Deployment | None = None
    try:
        db_host = lan.add("db")
        for host in ("web1", "web2", "wk1", "wk2"):
            lan.add(host)
        pg = PgServer(host=db_host, netns=lan.ns("db")).start()
        dep = Deployment(lan, pg, pg.database("iraas"), tmp_path_factory.mktemp("hosts"))
        for host, role in (("web1", "web"), ("web2", "web"), ("wk1", "workers"), ("wk2", "workers")):
            dep.start(host, role)
        for host in ("web1", "web2"):
            _until(lambda h=host: httpx.get(dep.web(h) + "/readyz", timeout=2).status_code == 200, f"{host} ready")
        yield dep
    finally:
        lan.close()  # every process of every host killed with its namespace
        for proc in dep.procs.values() if dep else ():
            proc.wait(30)
        if pg is not None:
            pg.remove()


def _workers(dep: Deployment, via: str) -> list[dict[str, Any]]:
    return list(dep.cluster(via)["workers"])


def test_100_course_requests_over_both_web_hosts_from_zero_workers(dep: Deployment, classifier: Classifier) -> None:
    _until(lambda: dep.cluster("web1")["by"] != "" and _workers(dep, "web1") == [], "no workers anywhere")
    files = sorted(COURSE.iterdir(), key=lambda f: int(f.stem.split("_")[1]))
    urls = [dep.web("web1" if i % 2 else "web2") for i in range(len(files))]
    with ThreadPoolExecutor(100) as pool:
        answers = list(pool.map(lambda u, f: course_post(u, f), urls, files))
    labels = expected(classifier, files)
    assert answers == [f"{f.stem}:{label}" for f, label in zip(files, labels, strict=True)]


def test_a_web_host_cut_off_its_accepted_requests_are_answered_through_the_other(dep: Deployment) -> None:
    files = [("files", (p.name, p.read_bytes() + b"web-cut")) for p in PHOTOS[:8]]
    accepted = httpx.post(dep.web("web2") + "/v1/recognitions?wait=false", files=files, timeout=30)
    assert accepted.status_code == 202
    ids = [e["id"] for e in accepted.json()]
    dep.lan.cut("web2")
    try:
        for rid in ids:
            _until(
                lambda rid=rid: (
                    httpx.get(f"{dep.web('web1')}/v1/recognitions/{rid}", timeout=5).json()["status"] == "done"
                ),
                f"{rid} answered through web1",
            )
    finally:
        dep.lan.mend("web2")


def test_a_worker_host_cut_off_mid_batch_its_requests_are_answered_by_the_other(dep: Deployment) -> None:
    # 600 images: both worker hosts receive batch after batch when one of them goes.
    ids = []
    for n in range(6):
        files = [("files", (p.name, p.read_bytes() + f"wk-cut-{n}".encode())) for p in PHOTOS[:100]]
        sent = httpx.post(dep.web("web1") + "/v1/recognitions?wait=false", files=files, timeout=60)
        assert sent.status_code == 202
        ids += [e["id"] for e in sent.json()]

    def wk1_working() -> bool:
        mine = set(re.findall(r"local-[0-9a-f]{8}", dep.log("wk1")))  # the workers wk1 launched
        view = dep.cluster("web1")
        running = [w for w in view["workers"] if w["id"] in mine and w["state"] in ("idle", "busy")]
        return bool(running) and view["queue"]["visible"] < 550

    _until(wk1_working, "wk1's workers on the burst", every=0.02)
    dep.lan.cut("wk1")
    try:
        results = {rid: _final(dep, "web1", rid) for rid in ids}
    finally:
        dep.lan.mend("wk1")
    assert {r["status"] for r in results.values()} == {"done"}  # none lost, none failed
    taken_over = [r for r in results.values() if r["timings"].get("attempt", 1) > 1]
    assert taken_over, "no request of wk1's was taken over"
    # Once wk1 is back, its late answers cannot replace the ones given: first result wins.
    assert {rid: _final(dep, "web1", rid) for rid in ids} == results


def _final(dep: Deployment, via: str, rid: str) -> dict[str, Any]:
    answer: dict[str, Any] = {}

    def done() -> bool:
        got = httpx.get(f"{dep.web(via)}/v1/recognitions/{rid}", timeout=5)
        if got.status_code == 503:  # the store away a moment (a restart): ask again, as told
            assert int(got.headers["retry-after"]) > 0 and got.json()["error"] == "store_unavailable"
            return False
        assert got.status_code == 200, got.text
        answer.update(got.json())
        return answer["status"] in ("done", "failed")

    _until(done, f"{rid} answered")
    return answer


def test_the_duty_holder_cut_off_another_host_takes_the_duties_over(dep: Deployment) -> None:
    _until(lambda: dep.holder("web1") != "", "a holder of the duties")
    holder = dep.holder("web1")
    via = "web2" if holder == "web1" else "web1"
    assert _lock_holders(dep) == 1  # one process of the four holds them
    assert {dep.holder(via) for _ in range(20)} == {holder}  # and only it publishes the status
    dep.lan.cut(holder)
    cut_at = time.monotonic()
    try:
        _until(lambda: dep.holder(via) not in ("", holder), f"the duties taken over from {holder}", within_s=60)
        print(f"duties taken over from {holder} by {dep.holder(via)} in {time.monotonic() - cut_at:.1f} s")
        # A dead letter (a request that failed max_receives times) still becomes a failed result.
        rid = _dead_letter(dep)
        assert _final(dep, via, rid)["error"] == "gave_up"
        assert _lock_holders(dep) == 1
    finally:
        dep.lan.mend(holder)


def _lock_holders(dep: Deployment) -> int:
    """Sessions holding the duties' advisory lock (iraas/duty.py's id, in 32 bits: objid)."""
    from iraas.duty import _DUTY_LOCK

    db = Database(dep.url)
    try:
        with db.connection() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = %s",
                (_DUTY_LOCK,),
            ).fetchone()
    finally:
        db.close()
    return int(row[0]) if row else 0


def _dead_letter(dep: Deployment) -> str:
    """A request the queue gave up on, as it lies in the dead-letter queue (the queue contract
    suite shows how one gets there), with an id the deployment issued (its key, in its store)."""
    from iraas.blobs.postgres import PostgresBlobStore
    from iraas.lifecycle.ids import RequestIds
    from iraas.messages import Request

    db = Database(dep.url)
    try:
        (rid,) = RequestIds(PostgresBlobStore(db)).new_ids(1)
        req = Request(rid, "inputs/" + "0" * 64, "poison.jpg", "efficientnet-lite0", "", time.time())
        with db.connection() as conn:
            conn.execute(
                "INSERT INTO iraas_messages (id, queue, body, receive_count, sent_at, visible_at)"
                " VALUES (gen_random_uuid(), 'requests-dlq', %s, 3, 0, 0)",
                (req.to_json(),),
            )
    finally:
        db.close()
    return rid


def test_postgresql_restarted_under_load_refuses_with_503_loses_nothing_and_recovers(dep: Deployment) -> None:
    accepted: list[str] = []
    refused: list[httpx.Response] = []
    stop = threading.Event()

    def load() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            photo = PHOTOS[n % len(PHOTOS)]
            try:
                r = httpx.post(
                    dep.web("web1") + "/v1/recognitions?wait=false",
                    files=[("files", (photo.name, photo.read_bytes() + f"load-{n}".encode()))],
                    timeout=30,
                )
            except httpx.HTTPError:
                continue
            if r.status_code == 202:
                accepted.append(r.json()[0]["id"])
            else:
                refused.append(r)
            time.sleep(0.05)

    client = threading.Thread(target=load)
    client.start()
    try:
        _until(lambda: len(accepted) >= 10, "requests accepted before the restart")
        dep.pg.stop()
        _until(lambda: len(refused) >= 3, "requests refused while the database is down")
        dep.pg.resume()
        before = len(accepted)
        _until(lambda: len(accepted) >= before + 10, "requests accepted again after the restart")
    finally:
        stop.set()
        client.join()
    for r in refused:
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, r.text
        assert r.json()["error"] in ("store_unavailable", "overloaded") and r.json()["request_id"]
        assert PASSWORD not in r.text
    assert {_final(dep, "web2", rid)["status"] for rid in accepted} == {"done"}


# What a process does on a connection of iraas's: holds a row lock in a transaction (as a
# statement cut off between its BEGIN and COMMIT would) and keeps another session idle.
_HOLD = """
import sys, time
from iraas.pg import Database
db = Database(sys.argv[1])
listener = db.dedicated()
with db.connection() as conn, conn.transaction():
    conn.execute("UPDATE iraas_messages SET body = body WHERE queue = %s", (sys.argv[2],))
    print("locked", flush=True)
    time.sleep(3600)
"""


def test_a_host_cut_off_inside_a_transaction_frees_its_locks_and_its_sessions(dep: Deployment) -> None:
    from iraas.queues.postgres import PostgresQueue

    db = Database(dep.url)
    queue = PostgresQueue(db, "cut-in-transaction")
    address = dep.lan.add("tx")
    log = dep.root / "tx.log"
    holder = None
    try:
        queue.send("held")
        holder = dep.lan.run("tx", [sys.executable, "-c", _HOLD, dep.url, queue.name], log)
        _until(lambda: "locked" in log.read_text(), "the message's row locked on the host")
        assert queue.receive(1) == []  # locked: every receiver skips it

        def sessions() -> int:
            with db.connection() as conn:
                sql = "SELECT count(*) FROM pg_stat_activity WHERE client_addr = %s"
                row = conn.execute(sql, (address,)).fetchone()
            return int(row[0]) if row else 0

        assert sessions() == 2
        dep.lan.cut("tx")
        _until(lambda: [m.body for m in queue.receive(1, visibility_s=60)] == ["held"], "the message claimed")
        _until(lambda: sessions() == 0, "the cut-off host's sessions ended")
    finally:
        dep.lan.mend("tx")  # its sessions, if still open, end with the process
        if holder is not None:
            holder.kill()
            holder.wait()
        queue.purge()
        db.close()


# A process of iraas's that asks the database once told to (a file appears), says how the question
# ended, and asks again each second until answered (as workers and controllers retry).
_ASK = """
import os, sys, time
from iraas.pg import Database, DatabaseError
db = Database(sys.argv[1])
with db.connection() as conn:
    conn.execute("SELECT 1")
print("connected", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
while True:
    try:
        with db.connection() as conn:
            conn.execute("SELECT 1")
        print("answered", flush=True)
        break
    except DatabaseError as exc:
        print("refused:", exc, flush=True)
        time.sleep(1)
"""


def test_a_host_cut_off_mid_question_is_refused_in_seconds_and_recovers_when_mended(dep: Deployment) -> None:
    dep.lan.add("ask")
    log, go = dep.root / "ask.log", dep.root / "ask.go"
    asker = dep.lan.run("ask", [sys.executable, "-c", _ASK, dep.url, str(go)], log)
    try:
        _until(lambda: "connected" in log.read_text(), "the host connected")
        dep.lan.cut("ask")
        go.touch()
        # Its question unacknowledged: without a user timeout, TCP would retry for ~15 minutes.
        _until(lambda: "refused:" in log.read_text(), "the question refused")
        dep.lan.mend("ask")
        _until(lambda: "answered" in log.read_text(), "answered once mended")
    finally:
        dep.lan.mend("ask")
        asker.kill()
        asker.wait()
