"""Warm starts: local workers forked from a template process that has loaded the model."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import httpx

from iraas.config import Settings
from iraas.parts import build, make_controller
from iraas.queues.sqlite import SqliteQueue

from .conftest import IMAGENET
from .fakes import FakeFleet
from .service import Service, alive

PHOTOS = iter(sorted((IMAGENET / "images").iterdir()))  # a new photo each time: none answered from the cache


def _parent(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def _recognize(svc: Service) -> dict[str, object]:
    photo = next(PHOTOS)
    r = httpx.post(svc.url + "/v1/recognitions", files={"files": (photo.name, photo.read_bytes())}, timeout=60)
    assert r.status_code == 200, r.text
    got = dict(r.json()[0])
    assert got["status"] == "done" and not got["cached"], got
    return got


def _warm(svc: Service) -> dict[str, object]:
    return dict(svc.cluster()["warm"] or {})


def test_workers_fork_from_the_template_and_the_fleet_sees_them_end(tmp_path: Path) -> None:
    svc = Service(tmp_path / "data", max_workers=1, scale_in_after_s=3).start()
    try:
        warm = svc.ready_template()
        assert warm["kind"] == "template" and int(warm["rss_bytes"]) > 50 * 2**20
        _recognize(svc)
        (pid,) = svc.worker_pids().values()
        assert _parent(pid) == warm["pid"]  # forked by the template, not a new interpreter
        # scaled in: the template reaps it and the fleet, told so, counts zero workers
        svc.wait_for(lambda: not svc.cluster()["workers"] and not alive(pid), timeout=30)
        # and the next burst forks again from the same template
        assert _recognize(svc)["status"] == "done"
        assert _warm(svc)["pid"] == warm["pid"]
    finally:
        svc.stop()


def test_a_dead_template_costs_one_slow_start_and_is_replaced(tmp_path: Path) -> None:
    svc = Service(tmp_path / "data", max_workers=1, scale_in_after_s=3).start()
    try:
        first = svc.ready_template()
        os.kill(int(first["pid"]), signal.SIGKILL)
        assert _recognize(svc)["status"] == "done"  # a new interpreter answered
        (pid,) = svc.worker_pids().values()
        assert _parent(pid) == svc.proc.pid  # type: ignore[union-attr]
        assert "starting a new interpreter instead" in svc.output()
        svc.wait_for(lambda: not svc.cluster()["workers"], timeout=30)
        # a new template took its place for the next start
        again = svc.ready_template()
        assert again["pid"] != first["pid"]
        assert _recognize(svc)["status"] == "done"
        (pid,) = svc.worker_pids().values()
        assert _parent(pid) == again["pid"]
    finally:
        svc.stop()


def test_kill_9_of_the_service_leaves_no_template_and_no_worker(tmp_path: Path) -> None:
    svc = Service(tmp_path / "data", max_workers=1, scale_in_after_s=60).start()
    try:
        template = int(svc.ready_template()["pid"])
        assert _recognize(svc)["status"] == "done"
        (worker,) = svc.worker_pids().values()
        assert _parent(worker) == template
        os.kill(svc.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
        svc.wait_for(lambda: not alive(template) and not alive(worker), timeout=30)
    finally:
        svc.stop()


def test_no_warm_start_runs_no_template(tmp_path: Path) -> None:
    svc = Service(tmp_path / "data", max_workers=1, warm_start=False).start()
    try:
        assert svc.cluster()["warm"] is None
        assert _recognize(svc)["status"] == "done"
        (pid,) = svc.worker_pids().values()
        assert _parent(pid) == svc.proc.pid  # type: ignore[union-attr]
    finally:
        svc.stop()


def test_a_request_wakes_the_controller_at_once(tmp_path: Path) -> None:
    """The controller ticks on a send, not only on its timer (here an hour): from zero workers
    the first launch follows the request, not the next tick."""
    settings = Settings(data_dir=tmp_path, max_workers=2, tick_s=3600)
    store, fleet = build(settings), FakeFleet()
    controller = make_controller(store, fleet, settings)
    stop = threading.Event()
    thread = threading.Thread(target=controller.run, args=(stop,))
    thread.start()
    try:
        SqliteQueue(tmp_path / "queue.db", "requests").send('{"not": "read"}')
        for _ in range(300):
            if fleet.instances:
                break
            stop.wait(0.1)
        assert len(fleet.instances) == 1
    finally:
        stop.set()
        thread.join(10)
