"""The store layer's own promises: signed ids, group-committed sends, reply channels."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from iraas.config import Settings
from iraas.parts import assemble, build
from iraas.queues.group import GroupSender
from iraas.queues.sqlite import SqliteQueue


def test_ids_are_recognised_by_every_process_of_the_deployment_and_carry_their_time(tmp_path: Path) -> None:
    one, two = build(Settings(data_dir=tmp_path)), build(Settings(data_dir=tmp_path))
    ids = one.ids.new_ids(100)
    assert len(set(ids)) == 100 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    at = two.ids.issued_at(ids[0])  # another process, the same key from the store
    assert at is not None and abs(at - one.ids.clock()) < 2
    other = build(Settings(data_dir=tmp_path / "elsewhere"))
    assert other.ids.issued_at(ids[0]) is None  # another deployment's key
    assert two.ids.issued_at("0" * 32) is None and two.ids.issued_at("xyz") is None


class _CountingQueue(SqliteQueue):
    calls = 0

    def send_batch(self, bodies: Sequence[str]) -> list[str]:
        self.calls += 1
        return super().send_batch(bodies)


def test_concurrent_sends_share_queue_calls_and_each_message_is_sent_once(tmp_path: Path) -> None:
    queue = _CountingQueue(tmp_path / "q.db", "requests")
    sender = GroupSender(queue)
    barrier = threading.Barrier(32)

    def send(i: int) -> None:
        barrier.wait()
        assert len(sender.send([f"m{i}"])) == 1

    threads = [threading.Thread(target=send, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = []
    while msgs := queue.receive(10):
        got += [m.body for m in msgs]
        queue.delete_batch([m.receipt for m in msgs])
    assert sorted(got) == sorted(f"m{i}" for i in range(32))
    assert queue.calls < 32  # shared: one call carried several senders' messages


def test_a_failed_group_send_fails_its_senders(tmp_path: Path) -> None:
    queue = SqliteQueue(tmp_path / "q.db", "requests")
    sender = GroupSender(queue)
    with pytest.raises(ValueError):
        sender.send(["x" * 300_000])  # over the message size limit
    assert queue.depth().visible == 0


def test_enrolments_are_kept_apart_from_the_base_gallery(tmp_path: Path) -> None:
    web1, web2 = build(Settings(data_dir=tmp_path)), build(Settings(data_dir=tmp_path))
    web1.gallery.publish_gallery(b"base")
    v0 = web1.gallery.gallery_version()
    (a,), (b,) = web1.ids.new_ids(1), web2.ids.new_ids(1)
    web1.gallery.add_enrolment(a, b"alice")
    web2.gallery.add_enrolment(b, b"bob")  # another process at the same time: both kept
    assert web1.gallery.gallery_version() != v0
    assert sorted(d for _, d in web1.gallery.load_gallery().parts) == [b"alice", b"base", b"bob"]
    web2.gallery.publish_gallery(b"base again")  # a restart with the same --gallery
    assert sorted(d for _, d in web2.gallery.load_gallery().parts) == [b"alice", b"base again", b"bob"]


def test_a_person_removed_leaves_out_earlier_photos_not_later_ones(tmp_path: Path) -> None:
    from iraas.model.faces import Gallery

    clock = [1000.0]
    parts = build(Settings(data_dir=tmp_path))
    store = assemble(requests=parts.requests, blobs=parts.blobs, replies=parts.replies, clock=lambda: clock[0])
    row = np.ones(128, np.float32)

    def one(name: str) -> bytes:
        g = Gallery()
        g.add(name, row, "test")
        return bytes(g.to_bytes())

    base = Gallery()
    for name in ("Alice", "Bob"):
        base.add(name, row, "base")
    store.gallery.publish_gallery(base.to_bytes())
    (early,) = store.ids.new_ids(1)
    store.gallery.add_enrolment(early, one("Alice"))
    version = store.gallery.gallery_version()
    clock[0] = 2000.0
    store.gallery.remove_person("Alice")
    assert store.gallery.gallery_version() != version  # workers reload
    assert Gallery.merged(store.gallery.load_gallery()).people() == {"Bob": 1}  # base and enrolment rows
    clock[0] = 3000.0
    (late,) = store.ids.new_ids(1)
    store.gallery.add_enrolment(late, one("Alice"))  # enrolled again after the removal: counts
    assert Gallery.merged(store.gallery.load_gallery()).people() == {"Alice": 1, "Bob": 1}


def test_retention_expires_inputs_results_and_dedup_but_keeps_enrolments(tmp_path: Path) -> None:
    import os
    import time

    from iraas.messages import Result

    store = build(Settings(data_dir=tmp_path))
    (old, new) = store.ids.new_ids(2)
    store.results.put_input(b"old bytes", "a" * 64)
    store.results.put_input(b"new bytes", "b" * 64)
    store.results.publish_result(Result(id=old, name="o.jpg", status="done", model="m", label="x"))
    store.results.publish_result(Result(id=new, name="n.jpg", status="done", model="m", label="y"))
    store.gallery.add_enrolment(old, b"one row")
    day = 86_400
    past = time.time() - 2 * day
    for key in ("inputs/" + "a" * 64, f"gallery/enrolments/{old}.npz"):
        os.utime(tmp_path / "blobs" / key, (past, past))
    with contextlib.closing(sqlite3.connect(tmp_path / "blobs" / ".records.db")) as db, db:  # results are rows
        db.execute("UPDATE blobs SET modified = ? WHERE key = ?", (past, f"results/{old}.json"))
    assert store.results.expire(input_ttl_s=day, result_ttl_s=day) == 2
    assert not store.blobs.exists("inputs/" + "a" * 64) and store.blobs.exists("inputs/" + "b" * 64)
    assert store.results.load_result(old) is None and store.results.load_result(new) is not None
    assert [d for _, d in store.gallery.load_gallery().parts] == [b"one row"]  # records, never expired
    # The same bytes sent again make the stored copy young again: it is wanted.
    os.utime(tmp_path / "blobs" / ("inputs/" + "b" * 64), (past, past))
    store.results.put_input(b"new bytes", "b" * 64)
    assert store.results.expire(input_ttl_s=day, result_ttl_s=day) == 0


def test_an_id_past_the_results_retention_reads_expired_not_queued(tmp_path: Path) -> None:
    import time

    store = build(Settings(data_dir=tmp_path))
    (rid,) = store.ids.new_ids(1)
    assert store.results.status(rid, result_ttl_s=3600) == {"id": rid, "status": "queued"}
    later = build(Settings(data_dir=tmp_path))
    later.results.clock = lambda: time.time() + 7200
    got = later.results.status(rid, result_ttl_s=3600)
    assert got is not None and (got["status"], got["error"]) == ("failed", "expired")
