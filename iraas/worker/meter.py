"""What a worker's heartbeat says of its load: CPU use and the rate it works at."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Meter:
    """CPU use over each heartbeat period, as a fraction of the worker's cores (the write-up's
    "average CPU utilization", per worker); and its service rate: images a second *while busy*,
    which is what sizing a fleet needs (a worker idle half the time still drains at that rate)."""

    def __init__(
        self,
        cores: int,
        cpu_clock: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cores, self.cpu_clock, self.clock = max(cores, 1), cpu_clock, clock
        self._lock = threading.Lock()
        self._last = (self.clock(), self.cpu_clock())
        self._images, self._busy_s = 0, 0.0  # since the last read
        self.rate = 0.0  # smoothed over periods; kept through idle ones

    def worked(self, images: int, seconds: float) -> None:
        with self._lock:
            self._images += images
            self._busy_s += seconds

    def read(self) -> tuple[float, float]:
        """(CPU use since the last read, 0..1; the service rate, images/s, 0 until measured)."""
        now, cpu = self.clock(), self.cpu_clock()
        with self._lock:
            (then, cpu_then), self._last = self._last, (now, cpu)
            images, busy_s, self._images, self._busy_s = self._images, self._busy_s, 0, 0.0
            if busy_s > 0 and images:
                measured = images / busy_s
                self.rate = measured if not self.rate else (self.rate + measured) / 2
        used = (cpu - cpu_then) / (now - then) / self.cores if now > then else 0.0
        return round(min(max(used, 0.0), 1.0), 3), round(self.rate, 2)
