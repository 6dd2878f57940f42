"""Kubernetes' stop, with the processes the chart's pods run (deploy/helm/iraas) on a real
PostgreSQL, each with the command and the settings the rendered chart gives it: the web pod's
init container (the admin key from its Secret), `iraas web`, `iraas up --role duties`, and
`iraas worker` as a KEDA job runs it. A
scale-in or a node drain sends a worker SIGTERM: it takes nothing new, finishes the batch it
holds, hands back what it has not started, and exits 0 before the grace period ends; a job
left idle ends by itself."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from iraas.blobs.postgres import PostgresBlobStore
from iraas.model.classifier import Classifier
from iraas.pg import Database
from iraas.queues.postgres import PostgresQueue

from .chart import env_of, pod, render
from .conftest import IMAGENET
from .service import Service

PHOTOS = sorted((IMAGENET / "images").iterdir())[300:340]
CHART = render({})  # the chart's defaults: its settings and each pod's command
WEB, DUTIES = pod(CHART, "demo-iraas-web"), pod(CHART, "demo-iraas-duties")
WORKER = pod(CHART, "demo-iraas-workers")
GRACE_S = WORKER["terminationGracePeriodSeconds"]  # Kubernetes kills after it
SHORTER = ["--visibility-s", "60", "--heartbeat-s", "0.2"]  # a long visibility: a leak would show


class Pods:
    """The chart's containers as processes on this host: each one's command, the ConfigMap's
    settings and its own values in its environment, and the database URL (a Secret there)."""

    def __init__(self, root: Path, pg_url: str) -> None:
        self.root, self.pg_url = root, pg_url
        self.key = "iraas_" + secrets.token_urlsafe(32)  # the admin key's Secret
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self, container: dict[str, Any]) -> dict[str, str]:
        secret = {"IRAAS_QUEUE": self.pg_url, "IRAAS_BLOBS": self.pg_url, "IRAAS_ADMIN_KEY": self.key}
        wanted = {e["name"] for e in container.get("env", []) if "valueFrom" in e}
        assert wanted <= set(secret), wanted
        return {**env_of(CHART, container), **{k: secret[k] for k in wanted}}

    def start(self, name: str, container: dict[str, Any], *extra: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "iraas.cli", *container["args"], *extra, "--data-dir", str(self.root / name)]
        with open(self.root / f"{name}.log", "ab") as log:  # the child has its own descriptor
            env = {**os.environ, **self.env(container)}
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        return proc

    def worker(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        return self.start(name, WORKER["containers"][0], *SHORTER, *extra)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def pods(tmp_path: Path, pg_url: str) -> Iterator[Pods]:
    p = Pods(tmp_path, pg_url)
    yield p
    p.stop()


def _submit(url: str, key: str) -> list[str]:
    ids = []
    for i in range(0, len(PHOTOS), 10):
        files = [("files", (f.name, f.read_bytes())) for f in PHOTOS[i : i + 10]]
        r = httpx.post(url + "/v1/recognitions?wait=false", files=files, headers=_auth(key), timeout=60)
        assert r.status_code == 202, r.text
        ids += [entry["id"] for entry in r.json()]
    return ids


def test_sigterm_finishes_the_batch_hands_back_the_rest_and_exits_0(
    tmp_path: Path, pg_url: str, pods: Pods, classifier: Classifier
) -> None:
    db = Database(pg_url)
    db.migrate()
    queue = PostgresQueue(db, "requests")
    (init,) = WEB["initContainers"]  # the admin key from its Secret into the store, as a pod starts
    assert pods.start("admin-key", init).wait(timeout=60) == 0, pods.log("admin-key")
    (web_c,) = WEB["containers"]
    assert web_c["args"][0] == "web"  # started below as `iraas web`, on loopback
    web = Service(tmp_path / "web", command="web", env=pods.env(web_c)).start()
    try:
        pods.start("duties", DUTIES["containers"][0])
        web.wait_for(lambda: "now does the deployment's duties" in pods.log("duties"), timeout=60)
        ids = _submit(web.url, pods.key)
        first = [pods.worker(f"job{i}") for i in (1, 2)]
        # Stopped once a result is stored and requests are held: whether a stop meets a worker
        # mid-batch (it finishes it) or in its long poll (it hands back what it just claimed),
        # at least one request is done. Held alone was a guess: both workers could be stopped
        # between their claim and their first image, and hand everything back.
        results = PostgresBlobStore(db)
        web.wait_for(lambda: queue.depth().in_flight > 0 and results.list("results/"), timeout=120, every=0.01)
        for proc in first:  # KEDA scaled in, or the node is drained
            proc.send_signal(signal.SIGTERM)
        assert [proc.wait(timeout=GRACE_S) for proc in first] == [0, 0]
        # nothing left hidden for a visibility timeout: finished and deleted, or handed back
        after = queue.depth()
        assert after.in_flight == 0
        finished = sum(1 for rid in ids if _status(web.url, rid, pods.key)["status"] == "done")
        assert finished >= 1 and after.visible == len(ids) - finished, (finished, after)

        # the next job drains the rest and, the queue left empty, ends by itself
        last = pods.worker("job3", "--worker-max-idle-s", "1")  # the chart's 30 s, shortened
        assert last.wait(timeout=300) == 0, pods.log("job3")
        assert "idle, exiting" in pods.log("job3")
        results = [_status(web.url, rid, pods.key) for rid in ids]
        assert [r["status"] for r in results] == ["done"] * len(ids), results
        assert [r["label"] for r in results] == [p.label for p in classifier.predict([f.read_bytes() for f in PHOTOS])]
        # each inferred once: no request came back after a worker had started it
        assert [r["timings"]["attempt"] for r in results] == [1] * len(ids)
        assert queue.depth().visible == queue.depth().in_flight == 0
    finally:
        web.stop()
        db.close()


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _status(url: str, rid: str, key: str) -> dict[str, object]:
    r = httpx.get(f"{url}/v1/recognitions/{rid}", headers=_auth(key), timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_worker_stopped_while_it_starts_exits_0(pods: Pods) -> None:
    """A pod scaled in as it starts: SIGTERM before the model is loaded is a clean end, not a
    failed job (Kubernetes counts a non-zero exit against backoffLimit)."""
    proc = pods.worker("early")
    _wait_for_line(pods, "early", "worker starting", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=GRACE_S) == 0, pods.log("early")
    log = pods.log("early")
    # stopped before it took work, or, had the model loaded meanwhile, by its loop's own stop
    assert "stopped before it took any work" in log or "ready (model" in log, log


def _wait_for_line(pods: Pods, name: str, line: str, proc: subprocess.Popen[bytes]) -> None:
    while line not in pods.log(name):
        assert proc.poll() is None, pods.log(name)
        with contextlib.suppress(subprocess.TimeoutExpired):  # look again at its end, or shortly
            proc.wait(timeout=0.05)
