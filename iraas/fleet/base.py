"""The fleet protocol: where workers run (local processes, EC2 instances); tests/test_fleet_contract.py
holds every fleet to it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Instance:
    id: str  # also the worker id its heartbeats carry
    state: str  # pending | running | stopping | stopped
    launched_at: float


class Fleet(Protocol):
    errors: list[dict[str, Any]]  # recent launch failures, newest last, for /v1/cluster

    def launch(self, n: int) -> list[str]:
        """Start n workers; returns their ids. Capacity errors: fewer ids, never an exception."""
        ...

    def stop(self, ids: Sequence[str]) -> None:
        """Ask these workers to finish what they hold and exit (SIGTERM, or terminate)."""
        ...

    def kill(self, ids: Sequence[str]) -> None:
        """End these workers now (a hung worker); their messages come back by visibility."""
        ...

    def list(self) -> list[Instance]:
        """Workers that count as capacity (pending and running), and those stopping."""
        ...

    def warm(self) -> dict[str, Any] | None:
        """What keeps starts fast, for /v1/cluster: the local template (ready, RSS) or the EC2
        warm pool (stopped instances kept); None when there is none."""
        ...

    def shutdown(self) -> None:
        """The controller is exiting: end what would otherwise be orphaned."""
        ...
