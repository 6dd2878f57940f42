"""Warm starts: a template process from which local workers are forked in milliseconds.

A worker started as a new interpreter spends ~0.5 s importing onnxruntime, numpy and Pillow,
hashing the weights and building its inference session before its first image. The template
(`python -m iraas.warm`, started by the local fleet with the workers' settings in its
environment; its side of the protocol is in `iraas/warm.py`) does all of that once: it imports
everything, resolves the model, builds an inference session and answers one made-up image with
it (so the code and the model file are paged in), then drops the session. What must not cross
a fork — an onnxruntime session and its thread pools, open database connections — is made in
each child.

Protocol, one line each way over the template's stdin and stdout:
    parent → template   spawn <worker id> <log file>
    template → parent   ready | spawned <worker id> <pid> | failed <worker id> <errno text>
                        | exited <pid> <return code (negative: killed by that signal)>
The template reaps its children and reports their exits; it ends when its stdin closes (the
parent is gone), and its children then notice their parent changed and stop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time

log = logging.getLogger(__name__)


# -- parent side ---------------------------------------------------------------------------


class Template:
    """The parent's handle on one template process."""

    def __init__(self, env: dict[str, str], log_path: str | None) -> None:
        with open(log_path or os.devnull, "ab") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "iraas.warm"],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=out,
                start_new_session=True,  # a Ctrl-C reaches `iraas up`, which stops workers in order
            )
        self.pid = self._proc.pid
        self._cond = threading.Condition()
        self._ready = False
        self._spawned: dict[str, int | str] = {}  # worker id → pid, or why the fork failed
        self._exits: dict[int, int] = {}  # pid → return code, for children that ended
        threading.Thread(target=self._read, name="template-reader", daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            kind, *rest = raw.decode().split()
            with self._cond:
                if kind == "ready":
                    self._ready = True
                elif kind == "spawned":
                    self._spawned[rest[0]] = int(rest[1])
                elif kind == "failed":
                    self._spawned[rest[0]] = " ".join(rest[1:])
                elif kind == "exited":
                    self._exits[int(rest[0])] = int(rest[1])
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def alive(self) -> bool:
        return self._proc.poll() is None

    def ready(self) -> bool:
        with self._cond:
            return self._ready and self.alive()

    def spawn(self, wid: str, log_path: str, timeout_s: float = 5.0) -> int:
        """Fork a worker; its pid. OSError when the template cannot (not ready, gone, fork failed)."""
        if not self.ready():
            raise OSError("the worker template is not ready")
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(f"spawn {wid} {log_path}\n".encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise OSError(f"the worker template is gone: {exc}") from None
        with self._cond:
            self._cond.wait_for(lambda: wid in self._spawned or not self.alive(), timeout_s)
            got = self._spawned.pop(wid, None)
        if not isinstance(got, int):
            raise OSError(f"the worker template could not fork a worker: {got or 'no answer'}")
        return got

    def exit_code(self, pid: int) -> int | None:
        with self._cond:
            return self._exits.get(pid)

    def rss_bytes(self) -> int:
        """The template's resident memory: what warm starts cost while no worker runs."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError):
            return 0
        return kb * 1024

    def close(self, grace_s: float = 5.0) -> None:
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()  # the template's signal to end
        try:
            self._proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


class Forked:
    """A worker forked by the template, with the part of `subprocess.Popen` the fleet uses."""

    def __init__(self, pid: int, template: Template) -> None:
        self.pid, self._template = pid, template
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._template.exit_code(self.pid)
            if self.returncode is None and not self._template.alive() and not _exists(self.pid):
                self.returncode = -signal.SIGKILL  # the template died and cannot tell: it is gone
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # reported exits only: a pid is never signalled after its reuse
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0)
            time.sleep(0.02)
        return code


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
