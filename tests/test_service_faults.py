"""Faults on the real service: killed and stopped workers, a crashing model, a restarted web tier."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import onnx
from onnx import TensorProto, helper

from iraas.model.classifier import Classifier
from iraas.queues.sqlite import SqliteQueue

from .conftest import IMAGENET
from .images import crashing_avif
from .service import Service, alive

PHOTOS = sorted((IMAGENET / "images").iterdir())


def _burst(svc: Service, files: list[Path], during: object) -> list[dict[str, object]]:
    """One sync request per file, all at once; `during(svc)` runs while they are in flight."""

    def one(f: Path) -> dict[str, object]:
        r = httpx.post(svc.url + "/v1/recognitions", files={"files": (f.name, f.read_bytes())}, timeout=180)
        assert r.status_code == 200, r.text
        (entry,) = r.json()
        return dict(entry)

    with ThreadPoolExecutor(len(files)) as pool:
        futures = [pool.submit(one, f) for f in files]
        during(svc)  # type: ignore[operator]
        return [f.result() for f in futures]


def _workers_holding_messages(svc: Service) -> list[int]:
    """Every worker's pid, once the queue has messages in flight: whichever holds them is
    among these (a heartbeat samples "busy" too late to pick one mid-batch reliably)."""
    queue = SqliteQueue(svc.data_dir / "queue.db", "requests")

    def find() -> list[int] | None:
        pids = list(svc.worker_pids().values())
        return pids if pids and queue.depth().in_flight > 0 else None

    return list(svc.wait_for(find, timeout=60, every=0.01))


def _unanswered_in_flight(svc: Service) -> set[str]:
    """The requests a worker holds (received, not yet visible again) whose result is not
    stored: nobody was answered for them yet (a worker stores a result before it replies)."""
    with contextlib.closing(sqlite3.connect(svc.data_dir / "queue.db")) as db:
        rows = db.execute(
            "SELECT body FROM messages WHERE queue = 'requests' AND receive_count > 0 AND visible_at > ?",
            (time.time(),),
        ).fetchall()
    ids = {json.loads(body)["id"] for (body,) in rows}
    return {rid for rid in ids if not svc.blobs.exists(f"results/{rid}.json")}


def _kill_workers_holding_unanswered(svc: Service, killed: list[int]) -> set[str]:
    """kill -9 both workers once one holds a request not answered yet; the requests they held
    unanswered. A kill can land after a batch's replies, before its delete: then none is held
    unanswered, and the next batch is tried (three times at most)."""
    for _ in range(3):

        def target() -> list[int] | None:
            # both workers up (max_workers 2): no other can start and claim before the kill
            live = [p for p in svc.worker_pids().values() if p not in killed and alive(p)]
            return live if len(live) == 2 and _unanswered_in_flight(svc) else None

        pids = svc.wait_for(target, timeout=60, every=0.01)
        before = _unanswered_in_flight(svc)  # all held by these workers, all the workers there are
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        for pid in pids:
            svc.wait_for(lambda p=pid: not alive(p), timeout=30)
        # Still without a result once the workers are dead: they held these unanswered. (New
        # workers may claim other requests meanwhile, not these: hidden for the visibility timeout.)
        held = before & _unanswered_in_flight(svc)
        if held:
            return held
    raise AssertionError("three kills in a row found every held request answered")


def _check_all_answered(results: list[dict[str, object]], files: list[Path], classifier: Classifier) -> None:
    assert [r["name"] for r in results] == [f.name for f in files]
    assert all(r["status"] == "done" for r in results), [r for r in results if r["status"] != "done"]
    assert [r["label"] for r in results] == [p.label for p in classifier.predict([f.read_bytes() for f in files])]
    assert len({r["id"] for r in results}) == len(files)


def _burst_signalling_busy_workers(
    tmp_path: Path, files: list[Path], sig: int, visibility_s: int, classifier: Classifier
) -> tuple[list[dict[str, object]], list[int]]:
    """A burst of one request per file; once workers hold messages, send each of them `sig`."""
    svc = Service(tmp_path / "data", max_workers=2, visibility_s=visibility_s, batch_size=4, heartbeat_s=0.2).start()
    signalled: list[int] = []

    def signal_workers(s: Service) -> None:
        for pid in _workers_holding_messages(s):
            os.kill(pid, sig)
            signalled.append(pid)

    try:
        results = _burst(svc, files, signal_workers)
        _check_all_answered(results, files, classifier)
        svc.wait_for(lambda: not any(alive(p) for p in signalled), timeout=30)
    finally:
        svc.stop()
    return results, signalled


def test_kill_9_a_worker_holding_messages_loses_nothing(tmp_path: Path, classifier: Classifier) -> None:
    files = PHOTOS[100:180]
    svc = Service(tmp_path / "data", max_workers=2, visibility_s=3, batch_size=4, heartbeat_s=0.2).start()
    killed: list[int] = []
    held: set[str] = set()
    try:
        results = _burst(svc, files, lambda s: held.update(_kill_workers_holding_unanswered(s, killed)))
        _check_all_answered(results, files, classifier)
    finally:
        svc.stop()
    again = [r for r in results if r["id"] in held]
    # each request the killed workers held unanswered came back after the visibility timeout...
    assert len(again) == len(held) and all(r["timings"]["attempt"] > 1 for r in again), again  # type: ignore[index]
    # ...alone: had one of them killed the worker, it could not take the others along
    assert all(r["timings"]["batch"] == 1 for r in again), [r["timings"] for r in again]  # type: ignore[index]


def test_sigterm_during_a_burst_finishes_what_it_holds(tmp_path: Path, classifier: Classifier) -> None:
    results, _ = _burst_signalling_busy_workers(tmp_path, PHOTOS[200:280], signal.SIGTERM, 30, classifier)
    # nothing was redelivered: each stopping worker finished the batch it held
    assert [r["timings"]["attempt"] for r in results] == [1] * len(results)  # type: ignore[index]


def _crashing_model(root: Path) -> Path:
    """A valid ONNX classifier that fails at run time, as a broken model would: the worker dies."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [7, 7])
    node = helper.make_node("Reshape", ["input", "shape"], ["logits"])
    graph = helper.make_graph(
        [node],
        "crash",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 7])],
        [shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, root / "crash.onnx")
    (root / "labels.txt").write_text("\n".join(f"class{i}" for i in range(7)))
    spec = root / "crash.toml"
    spec.write_text('onnx = "crash.onnx"\nlabels = "labels.txt"\ninput_size = 8\nresize = 0\n')
    return spec


def test_a_model_that_fails_at_run_time_fails_each_request_at_once_and_no_worker_dies(tmp_path: Path) -> None:
    spec = _crashing_model(tmp_path)
    svc = Service(tmp_path / "data", model=spec, max_workers=1, visibility_s=1, max_receives=3).start()
    try:
        files = [("files", (f"{i}.jpg", PHOTOS[i].read_bytes())) for i in range(3)]
        r = httpx.post(svc.url + "/v1/recognitions", files=files, timeout=120)
        first = svc.worker_pids()
        assert [(e["status"], e["error"]) for e in r.json()] == [("failed", "recognition_failed")] * 3
        assert all("Reshape" in e["reason"] for e in r.json())  # onnxruntime's own words
        assert [e["timings"]["attempt"] for e in r.json()] == [1] * 3  # no redelivery, no give-up cycle
        course = httpx.post(svc.url + "/", files={"inputFile": ("y.jpg", PHOTOS[5].read_bytes())}, timeout=120)
        assert course.status_code == 422 and course.json()["error"] == "recognition_failed"
        assert svc.worker_pids() == first and len(first) == 1  # the same worker all along
    finally:
        svc.stop()


def test_a_poison_image_fails_alone_and_its_batch_mates_are_answered(tmp_path: Path, classifier: Classifier) -> None:
    poison = crashing_avif(PHOTOS[0].read_bytes())
    svc = Service(tmp_path / "data", min_workers=1, max_workers=1, batch_size=4).start()
    try:
        files = [("files", (p.name, p.read_bytes())) for p in PHOTOS[10:13]] + [("files", ("poison.avif", poison))]
        r = httpx.post(svc.url + "/v1/recognitions", files=files, timeout=120)
        got = r.json()
        assert [(e["status"], e.get("error")) for e in got] == [("done", None)] * 3 + [("failed", "corrupt")]
        want = [p.label for p in classifier.predict([p.read_bytes() for p in PHOTOS[10:13]])]
        assert [e["label"] for e in got[:3]] == want
        assert [e["timings"]["attempt"] for e in got] == [1] * 4  # one pass: no worker died, nothing redelivered
    finally:
        svc.stop()


def test_results_survive_a_restart_and_ctrl_c_leaves_no_workers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    svc = Service(data, max_workers=2).start()
    try:  # a failed check must not leave the service running after the test
        resp = httpx.post(
            svc.url + "/v1/recognitions",
            params={"wait": "false"},
            files={"files": (PHOTOS[0].name, PHOTOS[0].read_bytes())},
            timeout=60,
        )
        location = resp.json()[0]["location"]
        svc.wait_for(lambda: httpx.get(svc.url + location).json()["status"] == "done")
        pids = list(svc.worker_pids().values())
        assert pids
    finally:
        code = svc.stop()
    assert code == 0
    assert not any(alive(p) for p in pids)  # Ctrl-C stopped every worker process
    again = Service(data, max_workers=2).start()
    try:
        body = httpx.get(again.url + location).json()
        assert (body["status"], body["label"]) == ("done", "tench")
    finally:
        again.stop()
