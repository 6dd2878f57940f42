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


def build(settings: Settings) -> Backends:
    return aws(settings) if settings.backend == "aws" else embedded(settings)


def aws(settings: Settings) -> Backends:
    """SQS queues named after the deployment, found (not created) as the stack made them; the
    deployment's S3 bucket. Reply queues are created on demand by the web process that owns one."""
    from .blobs.s3 import S3BlobStore, s3_client
    from .queues.sqs import SqsQueue, sqs_client

    region, endpoint = settings.aws_region or None, settings.aws_endpoint_url or None
    sqs = sqs_client(region, endpoint)

    @lru_cache(maxsize=64)
    def queue(name: str) -> Queue:
        return SqsQueue(sqs, f"{settings.name}-{name}")

    requests = SqsQueue(sqs, f"{settings.name}-{REQUESTS}", max_receives=settings.max_receives, create=False)
    return Backends(requests, S3BlobStore(s3_client(region, endpoint), settings.bucket), queue)


def embedded(settings: Settings) -> Backends:
    """SQLite queue file and a directory store under `settings.data_dir`."""
    path = settings.queue_path

    @lru_cache(maxsize=64)
    def queue(name: str) -> Queue:
        return SqliteQueue(path, name)

    requests = SqliteQueue(path, REQUESTS, max_receives=settings.max_receives)
    return Backends(requests, DirectoryBlobStore(settings.blob_root), queue)
