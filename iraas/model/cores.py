"""Idle cores for a lone request: an image runs on more threads when the machine has cores free.

A worker's model runs on `threads` (1) threads, so that N workers fill N cores without
oversubscribing them. When requests come one at a time, that leaves every core but one idle
while the request waits on one. With `idle_threads` above `threads`, a worker keeps a second
session of the model with that many threads and runs an image on it whenever that many cores
are free as the image starts: the kernel's count of runnable threads (/proc/loadavg, this
worker's own among them) says so. With the cores busy (other workers, other processes) the
image runs as before. The same graph, the same answers: onnxruntime and OpenVINO split an
operation's output among their threads, not its sums.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .runtime import Runtime

log = logging.getLogger(__name__)

_LOADAVG = Path("/proc/loadavg")
_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>", or "max <period>"


# `idle_threads` 0 means the usable cores, up to this many: a model of this size gains less and
# less from each thread more (measured here only up to 2: 1.6x), and each costs memory.
AUTO_MOST = 4


def idle_threads(setting: int, cores: int) -> int:
    """The `idle_threads` setting's value: itself, or for 0 the `cores`, up to AUTO_MOST."""
    return setting or min(cores, AUTO_MOST)


def usable_cores(cpu_max: Path = _CPU_MAX) -> int:
    """The cores this process may use: those it may run on, within its cgroup's CPU quota (a
    container's CPU limit), rounded down, at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.floor(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 file (or an unreadable one): no quota known
    return max(cores, 1)


def runnable(loadavg: Path = _LOADAVG) -> int | None:
    """Threads runnable on the machine now, the caller's included (None: not known)."""
    try:
        return int(loadavg.read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def threads_now(running: int | None, cores: int, narrow: int, wide: int) -> int:
    """The threads for the next image: `wide` when the caller (one of the `running`) and
    `wide - 1` more threads would each have a core of the `cores`; `narrow` otherwise, or when
    nobody knows."""
    if running is None or wide <= narrow:
        return narrow
    return wide if running - 1 + wide <= cores else narrow


class Adaptive:
    """A runtime on `narrow` threads, and one on `wide` threads used while the cores are free
    for them (`threads_now`). The wide one is opened in the background, so a worker starts as
    fast as before; until it is there (or if it cannot be opened) every image runs narrow."""

    def __init__(
        self,
        narrow: Runtime,
        open_wide: Callable[[], Runtime],
        threads: tuple[int, int],
        cores: int,
        running: Callable[[], int | None] = runnable,
    ) -> None:
        self.name, self.precision = narrow.name, narrow.precision
        self._narrow: Runtime = narrow
        self._wide: Runtime | None = None
        self._threads, self._cores, self._running = threads, cores, running
        self.wide_runs = 0  # images run on the wide session (what the tests observe)
        self.opened = threading.Event()  # set once the wide session is there, or failed
        # Not a daemon: a process that ends while the session is being made waits for it (~0.05-0.25
        # s), as a runtime's C++ threads torn down mid-construction abort the process instead.
        threading.Thread(target=self._open, args=(open_wide,), name="wide-session").start()

    def _open(self, open_wide: Callable[[], Runtime]) -> None:
        try:
            self._wide = open_wide()
        except Exception:
            narrow, wide = self._threads
            log.warning(
                "the model's session on %d threads could not be opened: every image on %d", wide, narrow, exc_info=True
            )
        finally:
            self.opened.set()

    def run(self, tensor: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        wide, (narrow, most) = self._wide, self._threads
        if wide is not None and threads_now(self._running(), self._cores, narrow, most) == most:
            self.wide_runs += 1
            return wide.run(tensor)
        return self._narrow.run(tensor)
