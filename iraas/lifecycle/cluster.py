"""What the workers and the controller tell every other process: heartbeats and the status.

    heartbeats/<worker>.json   each worker's state (not fsynced: a lost beat is the next one)
    cluster/status.json        what the controller saw and did, ids in hand included

Workers write heartbeats, the controller reads them and publishes the status; web processes
read the status (for /v1/cluster, /metrics, and whether an id is "running").
"""

from __future__ import annotations

import logging
import threading
import time

from ..blobs.base import BlobNotFound, BlobStore
from ..messages import ClusterStatus, Heartbeat, MessageError

log = logging.getLogger(__name__)
HEARTBEATS = "heartbeats/"
CLUSTER = "cluster/"  # rewritten every controller tick
_STATUS = CLUSTER + "status.json"


class Cluster:
    def __init__(self, blobs: BlobStore, status_ttl_s: float = 0.25) -> None:
        self.blobs, self.status_ttl_s = blobs, status_ttl_s
        self._status: tuple[float, ClusterStatus] | None = None
        self._lock = threading.Lock()

    def write_heartbeat(self, beat: Heartbeat) -> None:
        self.blobs.put(HEARTBEATS + beat.worker + ".json", beat.to_json().encode(), durable=False)

    def heartbeats(self) -> dict[str, Heartbeat]:
        beats = {}
        for key in self.blobs.list(HEARTBEATS):
            try:
                beat = Heartbeat.from_json(self.blobs.get(key))
            except (BlobNotFound, MessageError, TypeError):
                continue  # deleted meanwhile, or half a format change: the next tick sees it
            beats[beat.worker] = beat
        return beats

    def remove_heartbeat(self, worker: str) -> None:
        self.blobs.delete(HEARTBEATS + worker + ".json")

    def publish_status(self, status: ClusterStatus) -> None:
        self.blobs.put(_STATUS, status.to_json().encode(), durable=False)

    def status(self) -> ClusterStatus:
        """The controller's last published view, re-read at most every `status_ttl_s`."""
        now = time.monotonic()
        with self._lock:
            if self._status is not None and now - self._status[0] < self.status_ttl_s:
                return self._status[1]
        try:
            status = ClusterStatus.from_json(self.blobs.get(_STATUS))
        except BlobNotFound:
            status = ClusterStatus()
        except (MessageError, TypeError):
            log.warning("unreadable cluster status: read as empty until the controller writes it again")
            status = ClusterStatus()
        with self._lock:
            self._status = (now, status)
        return status
