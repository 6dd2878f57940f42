"""The controller loop with a fake fleet, on the real embedded queue and blob store."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from iraas.config import Settings
from iraas.controller import Controller
from iraas.lifecycle.cluster import Cluster
from iraas.messages import Heartbeat, Request, Result
from iraas.parts import Parts, build, make_controller

from .fakes import FakeFleet


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Parts, FakeFleet, Clock, Controller]:
    settings = Settings(
        data_dir=tmp_path,
        max_workers=3,
        target_per_worker=2,
        scale_in_after_s=5,
        heartbeat_stale_s=3,
        start_grace_s=4,
        max_receives=2,
    )
    b, clock = build(settings), Clock()
    fleet = FakeFleet(clock)
    return b, fleet, clock, make_controller(b, fleet, settings, clock=clock)


def _beat(b: Parts, wid: str, state: str, at: float, processed: int = 0) -> None:
    b.cluster.write_heartbeat(Heartbeat(worker=wid, pid=1, state=state, at=at, started_at=at, processed=processed))


def _request(rid: str, reply_to: str = "") -> str:
    req = Request(id=rid, input_key="inputs/x", name=f"{rid}.jpg", model="m", reply_to=reply_to, submitted_at=0.0)
    return req.to_json()


def test_scales_out_from_zero_then_in_only_idle_workers(setup: tuple[Parts, FakeFleet, Clock, Controller]) -> None:
    b, fleet, clock, ctl = setup
    assert ctl.tick().desired == 0 and not fleet.instances
    b.requests.send_batch([_request(f"{i:032x}") for i in range(5)])
    assert ctl.tick().desired == 3  # ceil(5 / 2), capped at max 3
    assert len(fleet.instances) == 3
    b.requests.purge()
    ids = sorted(fleet.instances)
    _beat(b, ids[0], "busy", clock.now)
    _beat(b, ids[1], "idle", clock.now)
    _beat(b, ids[2], "idle", clock.now)
    for _ in range(7):  # wait out the 5 s window
        clock.now += 1
        for wid in fleet.instances:
            _beat(b, wid, "busy" if wid == ids[0] else "idle", clock.now)
        ctl.tick()
    assert ids[0] in fleet.instances  # the busy one is never stopped
    assert set(fleet.stopped) == {ids[1], ids[2]}


def test_stale_worker_is_replaced(setup: tuple[Parts, FakeFleet, Clock, Controller]) -> None:
    b, fleet, clock, ctl = setup
    b.requests.send(_request("a" * 32))
    ctl.tick()
    (first,) = fleet.instances
    _beat(b, first, "busy", clock.now)
    clock.now += 2
    ctl.tick()
    assert not fleet.killed
    clock.now += 2  # 4 s since its last beat, over heartbeat_stale_s = 3
    ctl.tick()
    assert fleet.killed == [first]
    assert list(fleet.instances) != [first] and len(fleet.instances) == 1  # replaced in the same tick
    assert first not in b.cluster.heartbeats()


def test_worker_that_never_reports_is_replaced_after_grace(
    setup: tuple[Parts, FakeFleet, Clock, Controller],
) -> None:
    b, fleet, clock, ctl = setup
    b.requests.send(_request("b" * 32))
    ctl.tick()
    clock.now += 5
    ctl.tick()
    assert len(fleet.killed) == 1 and len(fleet.instances) == 1


def test_dead_letters_become_failed_results_and_replies(setup: tuple[Parts, FakeFleet, Clock, Controller]) -> None:
    b, _, _, ctl = setup
    rid = "c" * 32
    inbox = b.replies.inbox("test")
    b.requests.send(_request(rid, reply_to="test"))
    for _ in range(2):  # two deliveries that never finish (max_receives = 2)
        assert b.requests.receive(1, visibility_s=0)
    assert b.requests.receive(1) == []  # moved to the dead-letter queue
    ctl.tick()
    result = b.results.load_result(rid)
    assert result is not None and (result.status, result.error) == ("failed", "gave_up")
    assert "gave up after 2 attempts" in (result.reason or "")
    (reply,) = inbox.receive(1)
    inbox.close()
    assert Result.from_json(reply) == result


def test_dead_letter_does_not_overwrite_a_late_success(setup: tuple[Parts, FakeFleet, Clock, Controller]) -> None:
    b, _, _, ctl = setup
    rid = "d" * 32
    done = Result(id=rid, name="x.jpg", status="done", model="m", label="tench", confidence=0.9)
    b.results.publish_result(done)
    assert b.requests.dead_letter is not None
    b.requests.dead_letter.send(_request(rid))
    ctl.tick()
    assert b.results.load_result(rid) == done


def test_a_dead_letter_whose_answer_cannot_be_stored_is_tried_again_at_the_next_tick(
    setup: tuple[Parts, FakeFleet, Clock, Controller], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store away for a moment (on PostgreSQL: a pool's connection broken by a restart, which
    the pool replaces) must not hold the client's answer for the dead letters' 60 s."""
    from iraas.blobs.base import BlobError

    b, _, _, ctl = setup
    rid = "e" * 32
    assert b.requests.dead_letter is not None
    b.requests.dead_letter.send(_request(rid))
    blobs, tries = ctl.results.blobs, []
    real = blobs.put_many

    def once_away(*args: Any, **kwargs: Any) -> Any:
        tries.append(1)
        if len(tries) == 1:
            raise BlobError("database: server closed the connection unexpectedly")
        return real(*args, **kwargs)

    monkeypatch.setattr(blobs, "put_many", once_away)
    with pytest.raises(BlobError):
        ctl.tick()
    ctl.tick()
    result = b.results.load_result(rid)
    assert result is not None and result.error == "gave_up"


def test_status_is_published_with_decisions(setup: tuple[Parts, FakeFleet, Clock, Controller]) -> None:
    b, _, _, ctl = setup
    b.requests.send(_request("e" * 32))
    ctl.tick()
    status = b.cluster.status()
    assert status.queue["visible"] == 1
    assert [w.state for w in status.workers] == ["running"]
    assert status.decisions[-1]["desired"] == 1 and "scale out" in status.decisions[-1]["reason"]
    assert dataclasses.asdict(ctl.policy) == status.policy


def test_ids_in_workers_hands_are_published_for_status_queries(
    setup: tuple[Parts, FakeFleet, Clock, Controller],
) -> None:
    b, fleet, clock, ctl = setup
    b.requests.send(_request("1" * 32))
    ctl.tick()
    (wid,) = fleet.instances
    beat = Heartbeat(worker=wid, pid=1, state="busy", at=clock.now, started_at=0.0, current=["1" * 32, "2" * 32])
    b.cluster.write_heartbeat(beat)
    ctl.tick()
    assert Cluster(b.blobs).status().running == [  # as another process reads it
        "1" * 32,
        "2" * 32,
    ]


def test_finished_work_keeps_a_worker_while_the_queue_is_empty(
    setup: tuple[Parts, FakeFleet, Clock, Controller],
) -> None:
    b, fleet, clock, ctl = setup
    b.requests.send(_request("f" * 32))
    ctl.tick()
    (wid,) = fleet.instances
    b.requests.purge()
    for i in range(1, 30):  # 15 s of a worker finishing one request every half second
        clock.now += 0.5
        _beat(b, wid, "idle", clock.now, processed=i)
        ctl.tick()
    assert list(fleet.instances) == [wid] and not fleet.stopped
    for _ in range(14):  # then no work for 7 s (window 5 s)
        clock.now += 0.5
        _beat(b, wid, "idle", clock.now, processed=29)
        ctl.tick()
    assert fleet.stopped == [wid]


def test_a_failure_that_repeats_every_tick_is_logged_once_not_four_times_a_second(
    setup: tuple[Parts, FakeFleet, Clock, Controller], caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import threading

    *_, ctl = setup
    ctl.config = dataclasses.replace(ctl.config, tick_s=0.01)

    def full_disk() -> None:
        raise OSError(28, "No space left on device")

    ctl.tick = full_disk  # type: ignore[method-assign]
    stop = threading.Event()
    runner = threading.Thread(target=ctl.run, args=(stop,))
    with caplog.at_level(logging.ERROR, logger="iraas.controller"):
        runner.start()
        threading.Event().wait(1.0)  # ~100 failed ticks
        stop.set()
        runner.join()
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


def test_the_workers_signals_reach_the_decision_and_the_status(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, max_workers=10, target_wait_s=2.0, scale_in_after_s=5, start_grace_s=60)
    b, clock = build(settings), Clock()
    fleet = FakeFleet(clock)
    ctl = make_controller(b, fleet, settings, clock=clock)
    b.requests.send(_request("a" * 32))
    assert ctl.tick().rule == "wait" and len(fleet.instances) == 1  # no rate yet: one for one request
    (wid,) = fleet.instances
    clock.now += 3  # it took 3 s to start; it measured 5 images/s while busy, at 90 % CPU
    b.cluster.write_heartbeat(
        Heartbeat(worker=wid, pid=1, state="busy", at=clock.now, started_at=clock.now, cpu=0.9, rate=5.0)
    )
    for first in range(1, 40, 10):  # 40 in all: 8 s at 5/s for one worker
        b.requests.send_batch([_request(f"{i:032x}") for i in range(first, min(first + 10, 40))])
    decision = ctl.tick()
    assert decision.desired == 4 and "5.0/s" in decision.reason  # 40 / (5/s * 2 s)
    status = b.cluster.status()
    assert status.decisions[-1]["rule"] == "wait"
    load = status.load
    assert (load["cpu"], load["rate"], load["start_s"], load["backlog"]) == (0.9, 5.0, 3.0, 40)
    assert load["full_drain_s"] == 0.8  # 40 at 5/s on all 10
