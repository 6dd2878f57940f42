"""Entry points of the long-running parts: `iraas up`, `web`, `worker`, `controller`."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from .backends import embedded
from .config import Settings, to_env
from .controller import Controller
from .fleet.local import LocalFleet

log = logging.getLogger(__name__)


def _local_fleet(settings: Settings) -> LocalFleet:
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = to_env(settings) | {"IRAAS_PARENT_PID": str(os.getpid())}
    return LocalFleet(env, log_dir=str(logs))


def up(settings: Settings, with_controller: bool = True) -> None:
    """The web tier, and (for `up`) the controller with local worker processes, in one process."""
    import uvicorn

    from .web.app import create_app

    backends = embedded(settings)
    background = None
    if with_controller:
        fleet = _local_fleet(settings)
        controller = Controller(backends, fleet, settings)

        def background(stop: threading.Event) -> None:
            try:
                controller.run(stop)
            finally:
                fleet.shutdown()

    app = create_app(settings, backends, background=background)
    print(f"iraas serving on http://{settings.host}:{settings.port}  (data in {settings.data_dir})", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=5)


def controller(settings: Settings) -> None:
    backends = embedded(settings)
    fleet = _local_fleet(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        Controller(backends, fleet, settings).run(stop)
    finally:
        fleet.shutdown()


def worker(settings: Settings) -> None:
    from .model.builtin import resolve_model
    from .model.classifier import Classifier
    from .worker import Worker

    clf = Classifier(resolve_model(settings.model), threads=settings.threads, max_pixels=settings.max_pixels)
    w = Worker(embedded(settings), clf, settings, os.environ.get("IRAAS_WORKER_ID"))
    signal.signal(signal.SIGTERM, lambda *_: w.stop())
    signal.signal(signal.SIGINT, lambda *_: w.stop())
    parent = os.environ.get("IRAAS_PARENT_PID")
    if parent:
        threading.Thread(target=_orphan_watch, args=(int(parent), w.stop), daemon=True).start()
    log.info("worker %s ready (model %s)", w.id, clf.spec.name)
    w.run(max_idle_s=settings.worker_max_idle_s)


def _orphan_watch(parent: int, stop: object) -> None:
    # Started by `iraas up`: if it dies without stopping us (kill -9), stop too — no orphans.
    while os.getppid() == parent:
        time.sleep(1.0)
    log.warning("parent %d is gone: stopping", parent)
    stop()  # type: ignore[operator]
