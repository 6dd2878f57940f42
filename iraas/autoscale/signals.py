"""The signals the scaling rules are given, read from the workers' heartbeats and the queue;
and the estimate the web tier answers hopeless deadlines with."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..fleet.base import Instance
from ..messages import Heartbeat
from ..queues.base import Depth

_SEEN_MAX = 1000  # instances whose start was measured (ids only; old ones forgotten)


def mean_cpu(beats: Iterable[Heartbeat]) -> float | None:
    """The workers' average CPU use (None: no worker reports one)."""
    cpus = [b.cpu for b in beats if b.cpu is not None]
    return round(sum(cpus) / len(cpus), 3) if cpus else None


def mean_rate(beats: Iterable[Heartbeat]) -> float:
    """Images/s one worker handles while busy, averaged over those that measured it."""
    rates = [b.rate for b in beats if b.rate > 0]
    return round(sum(rates) / len(rates), 2) if rates else 0.0


def wait_at_full_size(load: dict[str, Any], ahead: int) -> float | None:
    """The shortest wait a new request can have behind `ahead` others, every worker there may
    be working at the measured rate (None: no rate measured yet, so nothing can be said)."""
    rate, most = load.get("rate") or 0.0, load.get("max_workers") or 0
    return (ahead + 1) / (rate * most) if rate and most else None


class Load:
    """How long a worker takes to start (launch to its first heartbeat, which it writes once its
    model is loaded), smoothed over the starts this controller saw; and the published figures."""

    def __init__(self) -> None:
        self.start_s = 0.0
        self._seen: dict[str, None] = {}

    def started(self, instances: Iterable[Instance], beats: dict[str, Heartbeat]) -> None:
        for inst in instances:
            beat = beats.get(inst.id)
            if beat is None or inst.id in self._seen:
                continue
            self._seen[inst.id] = None
            took = max(beat.started_at - inst.launched_at, 0.0)
            self.start_s = took if not self.start_s else (self.start_s + took) / 2
            if len(self._seen) > _SEEN_MAX:
                del self._seen[next(iter(self._seen))]

    def figures(self, depth: Depth, beats: dict[str, Heartbeat], rate: float, max_workers: int) -> dict[str, Any]:
        """For the status (/v1/cluster, CloudWatch): the signals, and how long the backlog takes
        to drain now and with every worker there may be (None: no rate measured yet)."""
        working = sum(b.state in ("idle", "busy") for b in beats.values())
        most = max(max_workers, len(beats))  # hosts with workers of their own count too
        return {
            "cpu": mean_cpu(beats.values()),
            "rate": rate or None,
            "start_s": round(self.start_s, 3),
            "backlog": depth.backlog,
            "max_workers": most,
            "drain_s": round(depth.backlog / (rate * working), 3) if rate and working else None,
            "full_drain_s": round(depth.backlog / (rate * most), 3) if rate else None,
            "oldest_age_s": depth.oldest_age_s,
        }
