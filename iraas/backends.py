"""Build the queue and blob-store clients once, at start-up, from the settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from .blobs.base import BlobStore
from .blobs.local import DirectoryBlobStore
from .config import Settings
from .queues.base import Queue
from .queues.sqlite import SqliteQueue

REQUESTS = "requests"


@dataclass(frozen=True)
class Backends:
    requests: Queue  # with its dead-letter queue
    blobs: BlobStore
    queue: Callable[[str], Queue]  # any other queue by name: reply queues


def embedded(settings: Settings) -> Backends:
    """SQLite queue file and a directory store under `settings.data_dir`."""
    path = settings.queue_path

    @lru_cache(maxsize=64)
    def queue(name: str) -> Queue:
        return SqliteQueue(path, name)

    requests = SqliteQueue(path, REQUESTS, max_receives=settings.max_receives)
    return Backends(requests, DirectoryBlobStore(settings.blob_root), queue)
