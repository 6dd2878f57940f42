"""One contract for every fleet: local worker processes (real ones), EC2 instances against
moto's server, and the fake the controller's tests use. The controller relies on exactly this:
launched workers count as capacity at once, a stopped or killed one leaves the fleet, and
nothing the fleet started outlives its shutdown where it could be orphaned."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from iraas.config import WORKER, Settings, process_env
from iraas.fleet.base import Fleet

from .fakes import FakeFleet

CAPACITY = ("pending", "running")


def _local(tmp_path: Path) -> Fleet:
    from iraas.fleet.local import LocalFleet

    env = process_env(Settings(data_dir=tmp_path / "data", heartbeat_s=0.2), WORKER, os.environ)
    (tmp_path / "logs").mkdir()
    return LocalFleet(env, parent=os.getpid(), log_dir=str(tmp_path / "logs"))


def _ec2(moto: str) -> Fleet:
    from iraas.awsapi import client
    from iraas.fleet.ec2 import Ec2Fleet

    ec2 = client("ec2", "us-east-1", moto)
    image = ec2.describe_images()["Images"][0]["ImageId"]
    data = {"ImageId": image, "InstanceType": "t3.micro"}
    ec2.create_launch_template(LaunchTemplateName="contract-worker", LaunchTemplateData=data)
    return Ec2Fleet(ec2, "contract", "contract-worker")


@pytest.fixture(params=["fake", "local", "ec2"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    if request.param == "fake":
        made: Fleet = FakeFleet()
    elif request.param == "local":
        made = _local(tmp_path)
    else:
        made = _ec2(request.getfixturevalue("moto"))
    yield made
    made.shutdown()


def _until(what: Callable[[], bool], why: str, within_s: float = 60) -> None:
    """Wait for a state the fleet reports (processes end and instances change state on their
    own time); `within_s` only bounds a hang."""
    deadline = time.monotonic() + within_s
    while not what():
        assert time.monotonic() < deadline, f"never: {why}"
        time.sleep(0.05)


def _launch(fleet: Fleet, n: int) -> list[str]:
    """`n` workers. A launch may start fewer than asked (partial capacity; moto's RunInstances
    starts MinCount), never more and never none here: ask again for the rest."""
    ids: list[str] = []
    while len(ids) < n:
        got = fleet.launch(n - len(ids))
        assert 1 <= len(got) <= n - len(ids)
        ids += got
    return ids


def _capacity(fleet: Fleet) -> set[str]:
    return {i.id for i in fleet.list() if i.state in CAPACITY}


def test_launched_workers_are_capacity_at_once_with_their_launch_time(fleet: Fleet) -> None:
    before = time.time()
    ids = _launch(fleet, 2)
    assert len(ids) == 2 and len(set(ids)) == 2
    listed = {i.id: i for i in fleet.list()}
    assert set(ids) <= set(listed)
    for wid in ids:
        assert listed[wid].state in CAPACITY
        assert before - 5 <= listed[wid].launched_at <= time.time() + 5


def test_a_stopped_worker_leaves_the_capacity_and_the_others_stay(fleet: Fleet) -> None:
    first, second = _launch(fleet, 2)
    fleet.stop([first])
    assert first not in _capacity(fleet)  # stopping at once: the controller must not count it
    _until(lambda: first not in {i.id for i in fleet.list()}, f"{first} gone after its stop")
    assert second in _capacity(fleet)


def test_a_killed_worker_leaves_the_fleet(fleet: Fleet) -> None:
    (wid,) = _launch(fleet, 1)
    fleet.kill([wid])
    _until(lambda: wid not in _capacity(fleet), f"{wid} gone after its kill")


def test_a_launch_of_none_starts_nothing_and_errors_and_warm_are_reported(fleet: Fleet) -> None:
    assert fleet.launch(0) == []
    assert isinstance(fleet.errors, list)
    warm = fleet.warm()
    assert warm is None or isinstance(warm, dict)


def test_stopping_unknown_or_ended_workers_is_harmless(fleet: Fleet) -> None:
    (wid,) = _launch(fleet, 1)
    fleet.kill([wid])
    _until(lambda: wid not in _capacity(fleet), f"{wid} gone after its kill")
    fleet.stop([wid])
    fleet.kill([wid])
    assert wid not in _capacity(fleet)
