"""One contract for every blob store: a directory, PostgreSQL (a real server), S3 against moto's
server, and an S3-compatible store named by its URL alone (s3://bucket?endpoint_url=…, moto's
server standing in for MinIO, Ceph or R2)."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from iraas.blobs.base import BadKey, BlobNotFound, BlobStore
from iraas.blobs.embedded import embedded_store
from iraas.blobs.local import DirectoryBlobStore
from iraas.blobs.sqlite import SqliteBlobStore
from iraas.stores import RECORDS

Factory = Callable[[], BlobStore]


def _s3_factory(url: str, bucket: str) -> Factory:
    from iraas.awsapi import client
    from iraas.blobs.s3 import S3BlobStore

    return lambda: S3BlobStore(client("s3", "us-east-1", url), bucket, prefix="deploy")


def _s3_url_factory(moto: str) -> Factory:
    from iraas.awsapi import client
    from iraas.config import Settings
    from iraas.stores import open_blobs

    client("s3", "us-east-1", moto).create_bucket(Bucket="compatible")
    url = f"s3://compatible?endpoint_url={moto}&region=us-east-1&prefix=site"
    return lambda: open_blobs(Settings(blobs=url))


def _pg_factory(url: str) -> Factory:
    from iraas.blobs.postgres import PostgresBlobStore
    from iraas.pg import Database

    Database(url).migrate()
    return lambda: PostgresBlobStore(Database(url))


@pytest.fixture(params=["directory", "sqlite", "embedded", "postgres", "s3", "s3-url"])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    if request.param == "directory":
        root = tmp_path / "blobs"
        return lambda: DirectoryBlobStore(root)
    if request.param == "sqlite":
        return lambda: SqliteBlobStore(tmp_path / "blobs.db")
    if request.param == "embedded":  # files, and the records in their SQLite file: as `iraas up` opens it
        return lambda: embedded_store(tmp_path / "blobs", RECORDS)
    if request.param == "postgres":
        return _pg_factory(request.getfixturevalue("pg_url"))
    if request.param == "s3-url":
        return _s3_url_factory(request.getfixturevalue("moto"))
    from iraas.awsapi import client

    url = request.getfixturevalue("moto")
    client("s3", "us-east-1", url).create_bucket(Bucket="iraas-test")
    return _s3_factory(url, "iraas-test")


def test_put_get_exists_delete(factory: Factory) -> None:
    store = factory()
    assert store.put("results/a.json", b"{}")
    assert store.get("results/a.json") == b"{}"
    assert store.exists("results/a.json") and not store.exists("results/b.json")
    assert store.put("results/a.json", b"[1]")  # plain put overwrites
    assert store.get("results/a.json") == b"[1]"
    store.delete("results/a.json")
    store.delete("results/a.json")  # deleting nothing is fine
    with pytest.raises(BlobNotFound):
        store.get("results/a.json")


def test_if_absent_keeps_the_first_write(factory: Factory) -> None:
    store = factory()
    assert store.put("results/x.json", b"first", if_absent=True)
    assert not store.put("results/x.json", b"second", if_absent=True)
    assert store.get("results/x.json") == b"first"


def test_several_at_once_as_one_at_a_time(factory: Factory) -> None:
    """A worker stores and reads a whole batch in one call: the same outcome as a call each."""
    store = factory()
    assert store.put("results/old.json", b"first")
    batch = {"results/old.json": b"second", "results/new.json": b"new", "results/big.json": bytes(range(256)) * 600}
    assert store.put_many(batch, if_absent=True) == {"results/new.json", "results/big.json"}
    assert store.get("results/old.json") == b"first"  # the first write stands
    wanted = ["results/old.json", "results/big.json", "results/none.json", "results/old.json"]
    assert store.get_many(wanted) == {
        "results/old.json": b"first",
        "results/big.json": batch["results/big.json"],
    }  # a missing key is absent, a repeated one there once
    assert store.put_many({"results/old.json": b"third", "heartbeats/w": b"b"}, durable=False) == {
        "results/old.json",
        "heartbeats/w",
    }
    assert store.get("results/old.json") == b"third"  # without if_absent, a put overwrites
    assert store.put_many({}) == set() and store.get_many([]) == {}
    with pytest.raises(BadKey):
        store.put_many({"../escape": b"x"})
    with pytest.raises(BadKey):
        store.get_many(["results/a.json", "/etc/passwd"])


def test_sync_leaves_every_blob_as_it_was(factory: Factory) -> None:
    """A worker stores its results without waiting on the disk, replies, then syncs them before
    deleting its requests: a sync changes no blob, takes keys with none, refuses bad ones."""
    store = factory()
    lazily = {"results/a.json": b"a", "results/b.json": bytes(range(256)) * 600}
    assert store.put_many(lazily, if_absent=True, durable=False) == set(lazily)
    store.sync([*lazily, "results/none.json"])
    store.sync([])
    assert store.get_many([*lazily, "results/none.json"]) == lazily
    assert not store.exists("results/none.json")
    with pytest.raises(BadKey):
        store.sync(["results/a.json", "../escape"])


def test_link_names_a_blob_twice_and_the_first_name_wins(factory: Factory) -> None:
    """A worker keeps each answer under its dedup key too: a second name for the stored result."""
    store = factory()
    store.put("results/a.json", b"answer a")
    store.put("results/b.json", b"answer b")
    pairs = {"dedup/m/x.json": "results/a.json", "dedup/m/none.json": "results/missing.json"}
    assert store.link(pairs) == {"dedup/m/x.json"}
    assert store.get("dedup/m/x.json") == b"answer a" and not store.exists("dedup/m/none.json")
    assert store.link({"dedup/m/x.json": "results/b.json"}) == set()  # the first stands
    assert store.get("dedup/m/x.json") == b"answer a"
    store.delete("results/a.json")  # each name stands on its own
    assert store.get("dedup/m/x.json") == b"answer a" and store.list("dedup/") == ["dedup/m/x.json"]
    assert store.link({}) == set()
    with pytest.raises(BadKey):
        store.link({"../escape": "results/b.json"})


def test_put_from_a_file_stores_the_rest_of_it(factory: Factory, tmp_path: Path) -> None:
    store = factory()
    spooled = tmp_path / "upload"
    spooled.write_bytes(b"head" + bytes(range(256)) * 5000)  # 1.2 MB, as an upload spooled to disk
    with open(spooled, "rb") as f:
        assert store.put("inputs/big", f, if_absent=True)
    assert store.get("inputs/big") == spooled.read_bytes()
    with open(spooled, "rb") as f:
        assert not store.put("inputs/big", f, if_absent=True)


def test_list_by_prefix(factory: Factory) -> None:
    store = factory()
    for key in ("inputs/ab", "inputs/cd", "results/1.json", "heartbeats/w1", "dedup/m/ab.json", "dedup/m2/ab.json"):
        store.put(key, b"x", durable=not key.startswith("heartbeats/"))
    assert store.list("inputs/") == ["inputs/ab", "inputs/cd"]
    assert store.list("res") == ["results/1.json"]
    assert store.list("dedup/m/a") == ["dedup/m/ab.json"]
    assert store.list("dedup/m") == ["dedup/m/ab.json", "dedup/m2/ab.json"]
    assert store.list("nothing/here/") == []
    assert len(store.list()) == 6


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b", "a\\b", "a b", ".tmp-x", ".records.db", "a/.b"]
)
def test_bad_keys_are_refused(factory: Factory, key: str) -> None:
    store = factory()
    with pytest.raises(BadKey):
        store.put(key, b"x")
    with pytest.raises(BadKey):
        store.get(key)


def test_expire_removes_what_is_older_under_the_folder_only(factory: Factory, request: pytest.FixtureRequest) -> None:
    store = factory()
    for key in ("results/1.json", "results/2.json", "dedup/m/a.json", "inputs/ab"):
        store.put(key, b"x")
    if request.node.callspec.params["factory"].startswith("s3"):  # the bucket's lifecycle rules do it
        assert store.expire("results/", time.time() + 3600) == 0 and len(store.list()) == 4
        return
    assert store.expire("results/", time.time() - 3600) == 0  # none is an hour old
    assert store.expire("results/", time.time() + 3600) == 2  # both are older than an hour ahead
    assert store.list() == ["dedup/m/a.json", "inputs/ab"]
    assert store.expire("inputs/", time.time() + 3600) == 1 and store.list() == ["dedup/m/a.json"]


def _racer(factory: Factory, key: str, data: bytes, start: object, out: object) -> None:
    store = factory()
    start.wait()  # type: ignore[attr-defined]
    out.put((data, store.put(key, data, if_absent=True)))  # type: ignore[attr-defined]


def test_conditional_put_race_between_processes(factory: Factory) -> None:
    ctx = mp.get_context("fork")
    for round_ in range(5):
        key = f"results/race-{round_}.json"
        start, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_racer, args=(factory, key, f"p{i}".encode(), start, out)) for i in range(2)]
        for p in procs:
            p.start()
        start.set()
        outcomes = [out.get(timeout=30) for _ in procs]
        for p in procs:
            p.join()
        winners = [data for data, won in outcomes if won]
        assert len(winners) == 1, outcomes
        assert factory().get(key) == winners[0]


def test_records_an_earlier_release_kept_as_files_are_moved_into_the_record_file(tmp_path: Path) -> None:
    """An upgrade keeps every result, dedup entry and heartbeat: read from the record file, the
    files gone; the images stay files."""
    root = tmp_path / "blobs"
    before = DirectoryBlobStore(root)  # as earlier releases stored everything
    kept = {"results/a.json": b"A", "dedup/m/x.json": b"X", "heartbeats/w1.json": b"W", "inputs/ab": b"img"}
    before.put_many(kept)
    store = embedded_store(root, RECORDS)
    assert store.get_many(list(kept)) == kept and store.list() == sorted(kept)
    assert sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and "records" not in p.name
    ) == ["inputs/ab"]
    assert embedded_store(root, RECORDS).get("results/a.json") == b"A"  # opened again: nothing to move


def test_expire_removes_the_temporaries_a_killed_writer_left(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    store = embedded_store(root, RECORDS)
    store.put("inputs/ab", b"img")
    left = root / "inputs" / ".tmp-123-abcd-0"  # a put killed between its write and its link
    left.write_bytes(b"half")
    assert store.expire("inputs/", time.time() - 3600) == 0 and left.exists()
    assert store.expire("inputs/", time.time() + 3600) == 2 and not left.exists()


def test_reading_threads_that_end_leave_no_connection_open(tmp_path: Path) -> None:
    """The web tier reads from a thread pool that retires idle threads: the SQLite connection
    each opened must not outlive it (file descriptors would pile up for as long as it runs)."""
    store = SqliteBlobStore(tmp_path / "blobs.db")
    store.put("results/a.json", b"A")

    def open_files() -> int:  # this process's descriptors of the database file
        names = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(FileNotFoundError):  # (the listing's own, closed by now)
                names.append(os.readlink(f"/proc/self/fd/{fd}"))
        return sum(name.endswith("blobs.db") for name in names)

    for _ in range(20):
        reader = threading.Thread(target=store.get, args=("results/a.json",))
        reader.start()
        reader.join()
    # The writing connection's, and at most the last reader's: a thread's locals are cleared
    # just after join() returns. Before the fix: 21.
    assert open_files() <= 2
