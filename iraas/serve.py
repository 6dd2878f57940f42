"""Entry points of the long-running parts: `iraas up`, `web`, `worker`, `controller`."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable

from . import logs
from .config import Settings
from .faces.gallery import publish_if_given
from .fleet.base import Fleet
from .messages import FACES
from .parts import Parts, build, make_app, make_controller, make_deliverer, make_fleet, make_worker
from .pg import redacted
from .stores import blobs_url, queue_url

log = logging.getLogger(__name__)


def check_access(settings: Settings, parts: Parts) -> None:
    """Beyond loopback, keys are required: refuse to start with none to check against."""
    from .access.keys import KeyRing
    from .web.gate import is_loopback

    if settings.auth == "off" or (is_loopback(settings.host) and settings.auth == "auto"):
        return
    if not any(key.active for key in KeyRing(parts.blobs).all()):
        where = f"--data-dir {settings.data_dir}"
        if settings.blobs:
            where = f"--blobs '{redacted(settings.blobs)}'"
        elif settings.backend == "aws":
            where = f"--backend aws --name {settings.name}"
        raise ValueError(
            f"listening on {settings.host} requires API keys, and this deployment has none. Create one with\n"
            f"  iraas keys create admin --scope admin {where}\n"
            "or pass --no-auth to serve without keys on a private network."
        )


def up(settings: Settings, with_controller: bool = True) -> None:
    """What `role` says this host runs: the web tier and a controller (with its local workers,
    or, role web, none: it may still hold the deployment's duties); role workers: `controller`."""
    if settings.role in ("workers", "duties"):
        controller(settings, with_fleet=settings.role == "workers")
        return
    from .web.server import listen

    parts = build(settings)
    check_access(settings, parts)
    publish_if_given(settings.model, settings.gallery, parts.gallery)
    background = None
    if with_controller:
        ours = settings.role == "all" and settings.scaler == "controller"  # else another scales them
        fleet = make_fleet(settings) if ours else None
        background = _controller_thread(parts, fleet, settings)
    app = make_app(settings, parts, background=background)
    print(f"iraas serving on http://{settings.host}:{settings.port}  ({_where(settings)})", flush=True)
    listen(app, settings)


def _controller_thread(parts: Parts, fleet: Fleet | None, settings: Settings) -> Callable[[threading.Event], None]:
    deliverer = make_deliverer(parts, settings)
    controller = make_controller(
        parts, fleet, settings, counters=lambda: {"WebhooksFailed": deliverer.counts["failed"]}
    )

    def background(stop: threading.Event) -> None:
        hooks = threading.Thread(target=deliverer.run, args=(stop,), daemon=True, name="webhooks")
        hooks.start()
        try:
            controller.run(stop)
        finally:
            if fleet is not None:
                fleet.shutdown()
            parts.duty.release()
            hooks.join(timeout=settings.webhook_timeout_s + 2)

    return background


def _where(settings: Settings) -> str:
    if settings.queue or settings.blobs:
        return f"queue {redacted(queue_url(settings))}, blobs {redacted(blobs_url(settings))}"
    return str(settings.data_dir) if settings.backend == "embedded" else f"AWS deployment {settings.name}"


def controller(settings: Settings, with_fleet: bool = True) -> None:
    """The controller alone, with its local workers (`iraas controller`, `up --role workers`),
    or, `with_fleet` False, with none: the deployment's duties only (`up --role duties`)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if with_fleet:
        print(f"iraas workers on this host, up to {settings.max_workers}  ({_where(settings)})", flush=True)
    else:
        print(f"iraas duties, held by one process at a time  ({_where(settings)})", flush=True)
    _controller_thread(build(settings), make_fleet(settings) if with_fleet else None, settings)(stop)


def worker(settings: Settings, worker_id: str | None = None, parent: int | None = None) -> None:
    """One worker until SIGTERM (or idle for `worker_max_idle_s`); `parent`: a process whose
    end ends this one too (`iraas up`'s fleet, or its template)."""
    from .model.recognizer import BlobGallery, load_recognizer

    # A stop while the model loads (a pod scaled in as it starts) ends the worker cleanly, exit
    # 0: it holds nothing yet. Kubernetes counts any other exit as the job's failure.
    early = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: early.set())
    signal.signal(signal.SIGINT, lambda *_: early.set())
    wide = _idle_threads(settings)
    log.info(
        "worker starting (model %s on %d thread(s), %d while as many cores are free)",
        settings.model,
        settings.threads,
        wide,
    )
    parts = build(settings)
    recognizer = load_recognizer(
        settings.model,
        threads=settings.threads,
        limits=settings.image_limits,
        gallery=BlobGallery(parts.gallery),
        threshold=settings.face_threshold,
        runtime=settings.runtime,
        precision=settings.precision,
        idle_threads=wide,
    )
    wid = worker_id or (_instance_id() if settings.backend == "aws" else None)
    w = make_worker(parts, recognizer, settings, wid)
    logs.name_worker(w.id)
    signal.signal(signal.SIGTERM, lambda *_: w.stop())
    signal.signal(signal.SIGINT, lambda *_: w.stop())
    if early.is_set():
        log.info("worker %s: stopped before it took any work", w.id)
        return
    if parent:
        threading.Thread(target=_orphan_watch, args=(parent, w.stop), daemon=True).start()
    log.info("worker %s ready (model %s)", w.id, recognizer.spec.name)
    w.run(max_idle_s=settings.worker_max_idle_s)


def _idle_threads(settings: Settings) -> int:
    """The model's threads for an image while the cores are free (the faces model runs on
    `threads` only)."""
    from .model.cores import idle_threads, usable_cores

    if settings.model == FACES:
        return settings.threads
    return max(idle_threads(settings.idle_threads, usable_cores()), settings.threads)


def _instance_id() -> str | None:
    """On EC2, heartbeats carry the instance id (IMDSv2: a token first)."""
    base = "http://169.254.169.254/latest"
    try:
        token_req = urllib.request.Request(
            f"{base}/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
        )
        token = urllib.request.urlopen(token_req, timeout=1).read().decode()
        id_req = urllib.request.Request(f"{base}/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": token})
        return str(urllib.request.urlopen(id_req, timeout=1).read().decode())
    except OSError:
        log.warning("no instance metadata: using %s-%d as the worker id", socket.gethostname(), os.getpid())
        return None


def _orphan_watch(parent: int, stop: object) -> None:
    # Started by `iraas up`: if it dies without stopping us (kill -9), stop too — no orphans.
    while os.getppid() == parent:
        time.sleep(1.0)
    log.warning("parent %d is gone: stopping", parent)
    stop()  # type: ignore[operator]
