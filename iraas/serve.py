"""Entry points of the long-running parts: `iraas up`, `web`, `worker`, `controller`."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import urllib.request

from .backends import Backends, build
from .config import Settings, to_env
from .controller import Controller
from .fleet.base import Fleet
from .fleet.local import LocalFleet

log = logging.getLogger(__name__)


def make_fleet(settings: Settings) -> Fleet:
    """EC2 instances from the deployment's launch template, or local worker processes."""
    if settings.backend == "aws":
        import boto3

        from ._aws import RETRY_CONFIG
        from .fleet.ec2 import Ec2Fleet

        ec2 = boto3.client(
            "ec2",
            region_name=settings.aws_region or None,
            endpoint_url=settings.aws_endpoint_url or None,
            config=RETRY_CONFIG,
        )
        return Ec2Fleet(ec2, settings.name, settings.launch_template or f"{settings.name}-worker")
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = to_env(settings) | {"IRAAS_PARENT_PID": str(os.getpid())}
    return LocalFleet(env, log_dir=str(logs))


def publish_gallery_if_given(settings: Settings, backends: Backends) -> None:
    """Model "faces": enrol `--gallery` and publish it before any worker starts."""
    from .messages import FACES
    from .model.recognizer import BlobGallery, gallery_from_path, publish_gallery

    if settings.model != FACES:
        return
    if settings.gallery:
        gallery = gallery_from_path(settings.gallery)
        publish_gallery(backends.blobs, gallery.to_bytes())  # type: ignore[attr-defined]
    BlobGallery(backends.blobs)()  # fails now, clearly, if there is none at all


def up(settings: Settings, with_controller: bool = True) -> None:
    """The web tier, and (for `up`) the controller and its fleet, in one process."""
    import uvicorn

    from .web.app import create_app

    backends = build(settings)
    publish_gallery_if_given(settings, backends)
    background = None
    if with_controller:
        fleet = make_fleet(settings)
        controller = Controller(backends, fleet, settings)

        def background(stop: threading.Event) -> None:
            try:
                controller.run(stop)
            finally:
                fleet.shutdown()

    app = create_app(settings, backends, background=background)
    where = settings.data_dir if settings.backend == "embedded" else f"AWS deployment {settings.name}"
    print(f"iraas serving on http://{settings.host}:{settings.port}  ({where})", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=5)


def controller(settings: Settings) -> None:
    backends = build(settings)
    fleet = make_fleet(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        Controller(backends, fleet, settings).run(stop)
    finally:
        fleet.shutdown()


def worker(settings: Settings) -> None:
    from .model.recognizer import BlobGallery, load_recognizer
    from .worker import Worker

    backends = build(settings)
    clf = load_recognizer(
        settings.model,
        threads=settings.threads,
        max_pixels=settings.max_pixels,
        gallery=BlobGallery(backends.blobs),
        threshold=settings.face_threshold,
    )
    wid = os.environ.get("IRAAS_WORKER_ID") or (_instance_id() if settings.backend == "aws" else None)
    w = Worker(backends, clf, settings, wid)
    signal.signal(signal.SIGTERM, lambda *_: w.stop())
    signal.signal(signal.SIGINT, lambda *_: w.stop())
    parent = os.environ.get("IRAAS_PARENT_PID")
    if parent:
        threading.Thread(target=_orphan_watch, args=(int(parent), w.stop), daemon=True).start()
    log.info("worker %s ready (model %s)", w.id, clf.spec.name)
    w.run(max_idle_s=settings.worker_max_idle_s)


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
