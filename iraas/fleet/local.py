"""Workers as local processes: `python -m iraas.cli worker`, settings passed in the environment
(config.process_env), the worker's id and its parent as arguments; forked from a warm template
(template.py) when `warm_start` is on, a new interpreter otherwise."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence

from .base import Instance
from .template import Forked, Template

log = logging.getLogger(__name__)


class LocalFleet:
    def __init__(
        self,
        env: dict[str, str],
        *,
        parent: int | None = None,
        clock: Callable[[], float] = time.time,
        log_dir: str | None = None,
        warm_start: bool = False,
    ) -> None:
        """`env`: the workers' whole environment; `parent`: the process whose end ends them."""
        self._env, self._parent = dict(env), parent
        self._clock = clock
        self._log_dir = log_dir
        self._procs: dict[str, tuple[subprocess.Popen[bytes] | Forked, float]] = {}
        self._stopping: set[str] = set()
        self.errors: list[dict[str, object]] = []
        self.template = self._new_template() if warm_start else None

    def _new_template(self) -> Template:
        return Template(self._env, self._log("template"))

    def _log(self, name: str) -> str | None:
        return os.path.join(self._log_dir, f"{name}.log") if self._log_dir else None

    def launch(self, n: int) -> list[str]:
        ids = []
        for _ in range(n):
            wid = f"local-{uuid.uuid4().hex[:8]}"
            try:
                proc = self._spawn(wid)
            except OSError as exc:
                log.exception("could not start a worker process")
                self.errors = [*self.errors[-9:], {"at": self._clock(), "code": "spawn", "message": str(exc)}]
                break
            self._procs[wid] = (proc, self._clock())
            ids.append(wid)
        return ids

    def _spawn(self, wid: str) -> subprocess.Popen[bytes] | Forked:
        if self.template is not None:
            try:
                return Forked(self.template.spawn(wid, self._log(wid) or os.devnull), self.template)
            except OSError as exc:
                log.warning("warm start of %s failed (%s): starting a new interpreter instead", wid, exc)
                if not self.template.alive():
                    self.template = self._new_template()  # for the next launch
        # Own session: a Ctrl-C in the terminal reaches `iraas up`, which stops workers in order.
        cmd = [sys.executable, "-m", "iraas.cli", "worker", "--worker-id", wid]
        cmd += ["--parent-pid", str(self._parent)] if self._parent else []
        with open(self._log(wid) or os.devnull, "ab") as out:
            return subprocess.Popen(cmd, env=self._env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, ids: Sequence[str]) -> None:
        self._signal(ids, signal.SIGTERM)
        self._stopping.update(ids)

    def kill(self, ids: Sequence[str]) -> None:
        self._signal(ids, signal.SIGKILL)

    def _signal(self, ids: Sequence[str], sig: int) -> None:
        for wid in ids:
            entry = self._procs.get(wid)
            if entry and entry[0].poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    entry[0].send_signal(sig)

    def list(self) -> list[Instance]:
        out = []
        for wid, (proc, at) in list(self._procs.items()):
            if proc.poll() is not None:  # reap: exited (idle exit, crash, or stopped)
                if proc.returncode not in (0, -signal.SIGTERM) and wid not in self._stopping:
                    log.warning("worker %s exited with %s", wid, proc.returncode)
                del self._procs[wid]
                self._stopping.discard(wid)
                continue
            out.append(Instance(wid, "stopping" if wid in self._stopping else "running", at))
        return out

    def warm(self) -> dict[str, object] | None:
        if self.template is None:
            return None
        t = self.template
        return {"kind": "template", "pid": t.pid, "ready": t.ready(), "rss_bytes": t.rss_bytes()}

    def shutdown(self, grace_s: float = 10.0) -> None:
        """Stop every worker: SIGTERM, then SIGKILL after `grace_s`. No orphans."""
        ids = list(self._procs)
        self.stop(ids)
        deadline = time.monotonic() + grace_s
        for wid in ids:
            proc = self._procs[wid][0]
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        if self.template is not None:
            self.template.close()
