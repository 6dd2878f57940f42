"""Entry points of the long-running parts: `iraas up`, `web`, `worker`, `controller`."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import urllib.request

from .config import Settings
from .controller import Controller
from .parts import build, make_fleet
from .store import Store
from .webhooks.deliver import Deliverer

log = logging.getLogger(__name__)


def publish_gallery_if_given(settings: Settings, store: Store) -> None:
    """Model "faces": enrol `--gallery` and publish it before any worker starts."""
    from .messages import FACES
    from .model.recognizer import BlobGallery, gallery_from_path

    if settings.model != FACES:
        return
    if settings.gallery:
        gallery = gallery_from_path(settings.gallery)
        store.publish_gallery(gallery.to_bytes())  # type: ignore[attr-defined]
    BlobGallery(store)()  # fails now, clearly, if there is none at all


def check_access(settings: Settings, store: Store) -> None:
    """Beyond loopback, keys are required: refuse to start with none to check against."""
    from .access.keys import KeyRing
    from .web.gate import is_loopback

    if settings.auth == "off" or (is_loopback(settings.host) and settings.auth == "auto"):
        return
    if not any(key.active for key in KeyRing(store.blobs).all()):
        where = (
            f"--data-dir {settings.data_dir}"
            if settings.backend == "embedded"
            else f"--backend aws --name {settings.name}"
        )
        raise ValueError(
            f"listening on {settings.host} requires API keys, and this deployment has none. Create one with\n"
            f"  iraas keys create admin --scope admin {where}\n"
            "or pass --no-auth to serve without keys on a private network."
        )


def up(settings: Settings, with_controller: bool = True) -> None:
    """The web tier, and (for `up`) the controller and its fleet, in one process."""
    from .web.app import create_app
    from .web.server import serve

    store = build(settings)
    check_access(settings, store)
    publish_gallery_if_given(settings, store)
    background = None
    if with_controller:
        fleet = make_fleet(settings)
        controller = Controller(store, fleet, settings)
        deliverer = Deliverer(store, settings)

        def background(stop: threading.Event) -> None:
            hooks = threading.Thread(target=deliverer.run, args=(stop,), daemon=True, name="webhooks")
            hooks.start()
            try:
                controller.run(stop)
            finally:
                fleet.shutdown()
                hooks.join(timeout=settings.webhook_timeout_s + 2)

    app = create_app(settings, store, background=background)
    where = settings.data_dir if settings.backend == "embedded" else f"AWS deployment {settings.name}"
    print(f"iraas serving on http://{settings.host}:{settings.port}  ({where})", flush=True)
    serve(app, settings)


def controller(settings: Settings) -> None:
    store = build(settings)
    fleet = make_fleet(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    hooks = threading.Thread(target=Deliverer(store, settings).run, args=(stop,), daemon=True, name="webhooks")
    hooks.start()
    try:
        Controller(store, fleet, settings).run(stop)
    finally:
        fleet.shutdown()
        hooks.join(timeout=settings.webhook_timeout_s + 2)


def worker(settings: Settings) -> None:
    from .model.recognizer import BlobGallery, load_recognizer
    from .worker import Worker

    store = build(settings)
    clf = load_recognizer(
        settings.model,
        threads=settings.threads,
        limits=settings.image_limits,
        gallery=BlobGallery(store),
        threshold=settings.face_threshold,
    )
    wid = os.environ.get("IRAAS_WORKER_ID") or (_instance_id() if settings.backend == "aws" else None)
    w = Worker(store, clf, settings, wid)
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
