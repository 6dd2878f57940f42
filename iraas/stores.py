"""The deployment's stores, each named by one URL: the queue (`--queue`) and the blob store
(`--blobs`); the reply channel and the webhooks' queue go with the queue's kind.

    queue   sqlite:///path/queue.db   postgresql://user@host:5432/db   sqs://
    blobs   file:///dir               postgresql://user@host:5432/db   s3://bucket[?endpoint_url=…]

Left empty, `--backend` says: embedded (SQLite and a directory under `--data-dir`) or aws (the
deployment's SQS queues and S3 bucket). A URL's password is never shown: `pg.redacted()` is what logs,
`/v1/cluster` and messages print; libpq's own ways (PGPASSFILE, PG* variables, a service file)
keep it out of the URL altogether.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .blobs.base import BlobStore
from .config import Settings
from .duty import Duty, PostgresDuty, SoleDuty
from .lifecycle.callbacks import CALLBACKS
from .lifecycle.cluster import CLUSTER, HEARTBEATS
from .lifecycle.results import DEDUP, RESULTS
from .pg import Database, redacted
from .queues.base import Queue
from .replies import Replies

REQUESTS = "requests"
WEBHOOKS = "webhooks"  # the deliveries queue: no dead letters (deliveries give up on time)
QUEUE_SCHEMES = ("sqlite", "postgresql", "postgres", "sqs")
BLOB_SCHEMES = ("file", "postgresql", "postgres", "s3")


@dataclass(frozen=True)
class Stores:
    requests: Queue
    deliveries: Queue | None
    blobs: BlobStore
    replies: Replies
    duty: Duty  # the once-per-deployment duties: an advisory lock on PostgreSQL


# The embedded store's small records, written per image or per second: a row each in its
# record file, not a file each (docs/queues.md).
RECORDS = (RESULTS, DEDUP, HEARTBEATS, CLUSTER, CALLBACKS)


def queue_url(settings: Settings) -> str:
    if settings.queue:
        return settings.queue
    return "sqs://" if settings.backend == "aws" else f"sqlite://{_abs(settings.queue_path)}"


def blobs_url(settings: Settings) -> str:
    if settings.blobs:
        return settings.blobs
    return f"s3://{settings.bucket}" if settings.backend == "aws" else f"file://{_abs(settings.blob_root)}"


def scheme(url: str, schemes: tuple[str, ...], what: str) -> str:
    """`url`'s scheme, or a clear refusal of a URL this release cannot use (never repeating its
    password); "postgres" is read as "postgresql"."""
    got = url.split(":", 1)[0].lower() if ":" in url else ""
    if got not in schemes:
        raise ValueError(f"{what} {redacted(url)!r}: use one of {', '.join(s + '://' for s in schemes)}")
    return "postgresql" if got == "postgres" else got


def local_disk(settings: Settings) -> Path | None:
    """The directory whose disk the blob store fills, when it is a local one (else None)."""
    url = blobs_url(settings)
    return Path(urlsplit(url).path) if url.startswith("file:") else None


class _Opened:
    """One Database per URL in a process: the queue, the blobs and the replies share it."""

    def __init__(self) -> None:
        self.dbs: dict[str, Database] = {}

    def db(self, url: str) -> Database:
        if url not in self.dbs:
            db = Database(url)
            db.migrate()  # connects now: a wrong URL or a server away is said at start
            self.dbs[url] = db
        return self.dbs[url]


def open_stores(settings: Settings, aws: Any = None) -> Stores:
    """The stores the settings name; `aws(service)`: a boto3 client for SQS and S3."""
    opened = _Opened()
    requests, deliveries, replies = _queues(settings, opened, aws)
    url = queue_url(settings)
    duty = PostgresDuty(url) if scheme(url, QUEUE_SCHEMES, "queue") == "postgresql" else SoleDuty()
    return Stores(requests, deliveries, _blobs(settings, opened, aws), replies, duty)


def open_blobs(settings: Settings, aws: Any = None) -> BlobStore:
    """The blob store alone (for `iraas keys`)."""
    return _blobs(settings, _Opened(), aws)


def _queues(settings: Settings, opened: _Opened, aws: Any) -> tuple[Queue, Queue | None, Replies]:
    url = queue_url(settings)
    kind = scheme(url, QUEUE_SCHEMES, "queue")
    if kind == "sqlite":
        from .queues.sqlite import SqliteQueue
        from .replies import SocketReplies

        path = Path(urlsplit(url).path)
        # A file lock held longer than store_timeout_s (a backup, a stuck process) is an error
        # the caller reports (503 at intake), not a request hanging for minutes.
        lock = settings.store_timeout_s
        requests = SqliteQueue(
            path, REQUESTS, max_receives=settings.max_receives, lock_timeout_s=lock, durable_sends=settings.power_safe
        )
        return requests, SqliteQueue(path, WEBHOOKS, lock_timeout_s=lock), SocketReplies(path.parent)
    if kind == "sqs":
        from .queues.sqs import SqsQueue
        from .replies import SqsReplies

        # The deployment's queues, found (not created) as its stack made them; reply queues
        # `<name>-replies-*` are created by the web process that owns one.
        sqs = aws("sqs")
        requests_q = SqsQueue(sqs, f"{settings.name}-{REQUESTS}", max_receives=settings.max_receives, create=False)
        hooks = SqsQueue(sqs, f"{settings.name}-{WEBHOOKS}", create=False)
        return requests_q, hooks, SqsReplies(sqs, f"{settings.name}-replies")
    from .queues.postgres import PostgresQueue
    from .replies import PostgresReplies

    db = opened.db(url)
    pg_requests = PostgresQueue(db, REQUESTS, max_receives=settings.max_receives)
    return pg_requests, PostgresQueue(db, WEBHOOKS), PostgresReplies(db)


def _blobs(settings: Settings, opened: _Opened, aws: Any) -> BlobStore:
    url = blobs_url(settings)
    kind = scheme(url, BLOB_SCHEMES, "blob store")
    parts = urlsplit(url)
    if kind == "file":
        from .blobs.embedded import embedded_store

        return embedded_store(parts.path, RECORDS)
    if kind == "s3":
        from .awsapi import client
        from .blobs.s3 import S3BlobStore

        if not parts.hostname:
            raise ValueError(f"blob store {url!r}: name the bucket, s3://bucket")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if "endpoint_url" in query or "region" in query:  # any S3-compatible store: MinIO, Ceph, R2, …
            s3 = client("s3", query.get("region") or settings.aws_region or None, query.get("endpoint_url"))
        else:
            s3 = aws("s3")
        return S3BlobStore(s3, parts.hostname, prefix=query.get("prefix", ""))
    from .blobs.postgres import PostgresBlobStore

    return PostgresBlobStore(opened.db(url))


def _abs(path: Path) -> str:
    return os.path.abspath(path)
