"""Fakes shared by the tests, each held to the same contract suite as the real backends
(tests/test_fleet_contract.py runs against FakeFleet too)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from iraas.fleet.base import Instance


class FakeFleet:
    """Workers that exist only as entries: launched running, gone when stopped or killed."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.instances: dict[str, Instance] = {}
        self.stopped: list[str] = []
        self.killed: list[str] = []
        self.errors: list[dict[str, object]] = []
        self._n = 0

    def launch(self, n: int) -> list[str]:
        ids = []
        for _ in range(n):
            self._n += 1
            wid = f"w{self._n}"
            self.instances[wid] = Instance(wid, "running", self.clock())
            ids.append(wid)
        return ids

    def stop(self, ids: Sequence[str]) -> None:
        self.stopped += ids
        for wid in ids:
            self.instances.pop(wid, None)

    def kill(self, ids: Sequence[str]) -> None:
        self.killed += ids
        for wid in ids:
            self.instances.pop(wid, None)

    def list(self) -> list[Instance]:
        return list(self.instances.values())

    def warm(self) -> dict[str, Any] | None:
        return None

    def shutdown(self) -> None:
        self.stop(list(self.instances))
