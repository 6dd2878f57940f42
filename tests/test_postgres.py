"""The service on PostgreSQL (one real server, the queue and the blob store both in it), as a
user starts it: `iraas up` with the URL in its environment. The contract suites run the backends
themselves; here, the whole service, its start-up refusals, and where the password never goes."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from iraas.model.classifier import Classifier
from iraas.pg import Database, DatabaseError

from .conftest import DATASETS
from .pgserver import PASSWORD, USER, PgServer
from .service import Service, course_post
from .test_service import expected

COURSE = DATASETS / "cse546-imagenet-100" / "images"


@pytest.fixture
def on_pg(tmp_path: Path, pg_url: str) -> Iterator[Service]:
    env = {"IRAAS_QUEUE": pg_url, "IRAAS_BLOBS": pg_url}
    svc = Service(tmp_path / "data", env=env, max_workers=2, scale_in_after_s=2).start()
    yield svc
    svc.stop()


def test_course_contract_100_concurrent_from_zero_on_postgresql(on_pg: Service, classifier: Classifier) -> None:
    files = sorted(COURSE.iterdir(), key=lambda f: int(f.stem.split("_")[1]))
    with ThreadPoolExecutor(100) as pool:
        answers = list(pool.map(functools.partial(course_post, on_pg.url), files))
    labels = expected(classifier, files)
    assert answers == [f"{f.stem}:{label}" for f, label in zip(files, labels, strict=True)]
    assert not (on_pg.data_dir / "queue.db").exists()  # nothing went to the embedded store
    assert not (on_pg.data_dir / "blobs").exists()


def test_the_password_is_never_shown_logged_or_on_a_command_line(on_pg: Service) -> None:
    files = sorted(COURSE.iterdir())[:4]
    r = httpx.post(on_pg.url + "/v1/recognitions", files=[("files", (f.name, f.read_bytes())) for f in files])
    assert r.status_code == 200 and all(e["status"] == "done" for e in r.json())
    cluster = httpx.get(on_pg.url + "/v1/cluster").text
    workers = [p for p in _processes() if "iraas.cli" in p[1] or "iraas.warm" in p[1]]
    assert workers  # the service, its template and its workers
    logs = [on_pg.output(), *(f.read_text() for f in (on_pg.data_dir / "logs").glob("*.log"))]
    for where, text in [("/v1/cluster", cluster), *(("log", t) for t in logs), *(("argv", c) for _, c in workers)]:
        assert PASSWORD not in text, where
    assert f"postgresql://{USER}:***@" in on_pg.output()  # what the start-up line shows instead


def _processes() -> list[tuple[int, str]]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    out.append((int(entry.name), f.read().replace(b"\0", b" ").decode(errors="replace")))
            except OSError:
                continue
    return out


@pytest.mark.parametrize(
    ("queue", "says"),
    [
        ("postgresql://iraas:{pw}@127.0.0.1:{closed}/nowhere", "cannot connect to postgresql://iraas:***@127.0.0.1"),
        ("postgresql://iraas:wrong-{pw}@127.0.0.1:{port}/postgres", "password authentication failed"),
        ("redis://127.0.0.1:6379", "queue 'redis://127.0.0.1:6379': use one of sqlite://"),
    ],
    ids=["unreachable", "refused", "unknown-scheme"],
)
def test_a_bad_url_or_an_unreachable_server_is_one_line_and_exit_2(
    tmp_path: Path, pg_server: PgServer, queue: str, says: str
) -> None:
    from .service import free_port

    url = queue.format(pw=PASSWORD, closed=free_port(), port=pg_server.port)
    env = {**os.environ, "IRAAS_QUEUE": url}
    args = [sys.executable, "-m", "iraas.cli", "up", "--data-dir", str(tmp_path), "--port", str(free_port())]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr
    assert PASSWORD not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_the_schema_is_made_once_and_versioned(pg_url: str) -> None:
    dbs = [Database(pg_url) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:  # four processes' first starts at once
        versions = list(pool.map(Database.migrate, dbs))
    assert versions == [1, 1, 1, 1]
    with dbs[0].connection() as conn:
        assert conn.execute("SELECT version FROM iraas_schema").fetchall() == [(1,)]
        conn.execute("INSERT INTO iraas_schema (version) VALUES (2)")  # a later release's
    with pytest.raises(DatabaseError, match="schema version 2, newer than this iraas knows"):
        Database(pg_url).migrate()  # an older release refuses rather than misread it
    for db in dbs:
        db.close()


def test_a_receive_takes_at_most_what_it_asks_for_whatever_plan_the_server_picks(pg_url: str) -> None:
    """Statistics taken while the table held one message (autovacuum does so early in a
    deployment's life) made the server re-run the claim's subquery for each row it joined: one
    worker's receive of 4 took the whole backlog, could not delete it in batches of 10, and
    every message went round to the dead letters."""
    from iraas.queues.postgres import PostgresQueue

    db = Database(pg_url)
    db.migrate()
    q = PostgresQueue(db, "work", max_receives=3)
    q.send("first")
    with db.connection() as conn:
        conn.execute("ANALYZE iraas_messages")
    for i in range(10):
        q.send_batch([f"m{i}-{j}" for j in range(10)])
    assert len(q.receive(4, visibility_s=30)) == 4
    assert q.depth().in_flight == 4
    db.close()


def test_every_session_keeps_the_urls_options_and_cannot_hold_locks_idle(pg_url: str) -> None:
    """An operator's `?options=` (a statement timeout, a search path) holds on every connection
    iraas opens, beside the settings that end a session idle inside a transaction."""
    db = Database(pg_url + "?options=-c%20statement_timeout%3D4321")
    settings = "SELECT current_setting('statement_timeout'), current_setting('idle_in_transaction_session_timeout')"
    try:
        for durable in (True, False):
            with db.connection(durable) as conn:
                assert conn.execute(settings).fetchone() == ("4321ms", "10s")
                assert conn.execute("SHOW synchronous_commit").fetchone() == ("on" if durable else "off",)
            listener = db.dedicated(durable)
            assert listener.execute(settings).fetchone() == ("4321ms", "10s")
            listener.close()
    finally:
        db.close()


def test_libpq_finds_the_password_in_a_passfile(tmp_path: Path, pg_server: PgServer, pg_url: str) -> None:
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{pg_server.port}:*:{USER}:{PASSWORD}\n")
    passfile.chmod(0o600)
    bare = pg_url.replace(f":{PASSWORD}@", "@")
    assert PASSWORD not in bare
    env = {**os.environ, "PGPASSFILE": str(passfile), "IRAAS_QUEUE": bare, "IRAAS_BLOBS": bare}
    keys = [sys.executable, "-m", "iraas.cli", "keys", "create", "ops", "--data-dir", str(tmp_path / "d")]
    made = subprocess.run(keys, env=env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    db = Database(pg_url)
    with db.connection() as conn:
        assert conn.execute("SELECT count(*) FROM iraas_blobs WHERE key LIKE 'keys/names/%'").fetchone() == (1,)
    db.close()


def test_a_reply_missed_while_the_inbox_reconnects_is_answered_from_the_store(pg_url: str, pg_server: PgServer) -> None:
    """A reply on PostgreSQL is a NOTIFY, which reaches only a session listening when it is sent.
    Here the reply never comes at all: the waiting request is answered only because the web
    process, once its inbox listens again, looks up the stored results of what it waits for."""
    import asyncio

    from iraas.messages import Result
    from iraas.replies import PostgresReplies
    from iraas.web.waiting import ReplyWaiter

    db = Database(pg_url)
    db.migrate()
    stored: dict[str, Result] = {}
    waiter = ReplyWaiter(PostgresReplies(db), stored=stored.get)
    listener = waiter.inbox._conn.info.backend_pid  # type: ignore[attr-defined]

    async def wait() -> Result:
        waiter.start(asyncio.get_running_loop())
        fut = waiter.expect("r1")
        stored["r1"] = Result(id="r1", name="a.jpg", status="done", model="m", label="tench")
        pg_server.psql(f"SELECT pg_terminate_backend({listener})")
        return await asyncio.wait_for(fut, 60)

    try:
        assert asyncio.run(wait()).label == "tench"
        assert waiter.inbox._conn.info.backend_pid != listener  # type: ignore[attr-defined]  # listening anew
    finally:
        waiter.stop()
        db.close()
