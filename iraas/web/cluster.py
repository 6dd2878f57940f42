"""The cluster as a web process shows it: the controller's last status, the queue as it is now
and, for admin keys and /metrics, the webhook deliveries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..lifecycle.callbacks import Callbacks
from ..lifecycle.cluster import Cluster
from ..messages import ClusterStatus
from ..queues.base import Depth, Queue


@dataclass(frozen=True)
class ClusterView:
    status: ClusterStatus
    depth: Depth | None = None  # None: the queue could not be read (config_errors says why)
    webhooks: dict[str, Any] | None = None  # counts by outcome, backlog: admin keys and /metrics
    config_errors: list[str] = field(default_factory=list)

    def queue(self) -> dict[str, Any]:
        if self.depth is None:
            return {}
        out: dict[str, Any] = {
            "visible": self.depth.visible,
            "in_flight": self.depth.in_flight,
            "delayed": self.depth.delayed,
            "oldest_age_s": self.depth.oldest_age_s,
        }
        if "dead_lettered" in self.status.queue:
            out["dead_lettered"] = self.status.queue["dead_lettered"]
        return out

    def answer(self, admin: bool) -> dict[str, Any]:
        """/v1/cluster: for admin keys everything; for others the load, not the deployment's
        inner workings."""
        if self.config_errors:
            return {"config_errors": self.config_errors, "queue": {}, "workers": [], "decisions": []}
        if not admin:
            workers = [{"state": w.state} for w in self.status.workers]
            return {"queue": self.queue(), "workers": workers, "history": self.status.history}
        out = self.status.as_dict() | {"queue": self.queue()}
        if self.webhooks is not None:
            out["webhooks"] = self.webhooks
        return out


def read_view(requests: Queue, cluster: Cluster, callbacks: Callbacks, *, webhooks: bool) -> ClusterView:
    """Blocking I/O: call from a thread. `webhooks`: also the deliveries' counts and backlog
    (two more reads: for admin keys and /metrics only)."""
    try:
        depth = requests.depth()
        status = cluster.status()
        hooks = callbacks.stats() if webhooks else None
    except PermissionError as exc:  # a configuration error: shown, not a 500
        return ClusterView(ClusterStatus(), config_errors=[str(exc)[:400]])
    return ClusterView(status, depth, hooks)
