"""The worker template's own process (`python -m iraas.warm`): it imports what a worker imports,
warms the model once, then forks a worker for each `spawn` line from the local fleet
(`iraas/fleet/template.py` has the protocol and the parent's side)."""

from __future__ import annotations

import gc
import io
import logging
import os
import select
import signal
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def _prepare() -> None:
    """Import what a worker imports and warm the model once; keep nothing that holds threads."""
    from . import parts, serve, worker  # noqa: F401  (imported for the children)
    from .config import load_settings
    from .messages import FACES
    from .model.recognizer import load_recognizer

    settings = load_settings()
    # The runtime too: what cannot run here is refused before any worker starts, and a graph it
    # needs (the faces model's, unpacked) is made once, here, not by each worker
    model, threads, runtime, precision = settings.model, settings.threads, settings.runtime, settings.precision
    if model == FACES:
        load_recognizer(model, threads=threads, gallery=lambda: None, runtime=runtime, precision=precision)
    else:
        recognizer = load_recognizer(
            model, threads=threads, limits=settings.image_limits, runtime=runtime, precision=precision
        )
        recognizer.classify([_sample_jpeg()])
        del recognizer
    gc.collect()


def _sample_jpeg() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 90, 60)).save(out, "JPEG")
    return out.getvalue()


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())  # one write per line: the SIGCHLD handler also writes


def _reap(*_: object) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _say(f"exited {pid} {os.waitstatus_to_exitcode(status)}")


def _child(wid: str, log_path: str, run: Callable[[str, int], int]) -> None:
    """In the forked worker: its own session and log, then the worker's main, then exit."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        code = run(wid, os.getppid())  # its parent, the template, is gone when the fleet's is
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        logging.getLogger(__name__).exception("worker %s failed", wid)
    finally:
        logging.shutdown()
        os._exit(code)


def _run_worker(wid: str, parent: int) -> int:
    """`iraas worker` without its command line (argparse and its imports cost a child ~30 ms)."""
    from . import serve
    from .config import load_settings
    from .parts import located

    serve.worker(located(load_settings()), worker_id=wid, parent=parent)
    return 0


def main() -> None:
    from .config import log_format_from_env
    from .logs import configure

    configure(log_format_from_env())
    t0 = time.perf_counter()
    _prepare()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops workers; ^C is its business
    signal.signal(signal.SIGCHLD, _reap)
    log.info("worker template ready in %.2f s (pid %d)", time.perf_counter() - t0, os.getpid())
    _say("ready")
    pending = b""
    while True:
        select.select([0], [], [])  # a SIGCHLD runs _reap, then the wait resumes
        chunk = os.read(0, 4096)  # not a buffered readline: select must see every unread byte
        if not chunk:
            return  # the parent is gone
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            _fork(line.decode())


def _fork(line: str) -> None:
    _, wid, log_path = line.split(maxsplit=2)
    try:
        pid = os.fork()
    except OSError as exc:
        _say(f"failed {wid} {exc.strerror or exc}")
        return
    if pid == 0:
        _child(wid, log_path.strip(), _run_worker)
    _say(f"spawned {wid} {pid}")


if __name__ == "__main__":
    main()
