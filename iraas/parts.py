"""The composition root: queues, blob stores, reply channels, fleets and AWS clients, built
once at start-up from the settings and passed in explicitly."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from .blobs.base import BlobStore
from .blobs.local import DirectoryBlobStore
from .config import Settings, worker_env
from .fleet.base import Fleet
from .queues.sqlite import SqliteQueue
from .replies import SocketReplies
from .store import Store

REQUESTS = "requests"
WEBHOOKS = "webhooks"  # the deliveries queue: no dead letters (deliveries give up on time)

log = logging.getLogger(__name__)


def aws_client(service: str, settings: Settings) -> Any:
    """A boto3 client for the deployment's region and endpoint."""
    from .awsapi import client

    return client(service, settings.aws_region or None, settings.aws_endpoint_url or None)


def located(settings: Settings) -> Settings:
    """On AWS without a bucket given, the deployment's bucket, from its stack's outputs."""
    if settings.backend != "aws" or settings.bucket:
        return settings
    from .awsapi import stack_outputs

    bucket = stack_outputs(aws_client("cloudformation", settings), settings.name)["Bucket"]
    return dataclasses.replace(settings, bucket=bucket)


def with_webhook_secret(settings: Settings) -> Settings:
    """On AWS, the webhook secret from Secrets Manager (`webhook_secret_arn`), held in this
    process's memory only: not in the instance's files, its user data or the stack. One that
    cannot be read is a configuration error, logged: the service runs with webhooks off
    (callbacks refused `webhooks_off`) rather than in a restart loop."""
    if settings.backend != "aws" or not settings.webhook_secret_arn or settings.webhook_secret:
        return settings
    from botocore.exceptions import ClientError

    from .awsapi import error_code
    from .signing import secret_keys

    arn = settings.webhook_secret_arn
    try:
        value = str(aws_client("secretsmanager", settings).get_secret_value(SecretId=arn)["SecretString"]).strip()
        secret_keys(value)
    except ClientError as exc:
        why = f"AWS refused it ({error_code(exc)}): this role needs secretsmanager:GetSecretValue on it"
    except ValueError as exc:  # secret_keys' words name the problem, never the value
        why = str(exc)
    else:
        return dataclasses.replace(settings, webhook_secret=value)
    log.error(
        "cannot use the webhook secret %s: %s; a configuration error: webhooks are off until it is fixed", arn, why
    )
    return settings


def blobs(settings: Settings) -> BlobStore:
    """The deployment's blob store alone (for `iraas keys`)."""
    if settings.backend == "aws":
        from .blobs.s3 import S3BlobStore

        return S3BlobStore(aws_client("s3", settings), settings.bucket)
    return DirectoryBlobStore(settings.blob_root)


def build(settings: Settings) -> Store:
    return aws(settings) if settings.backend == "aws" else embedded(settings)


def aws(settings: Settings) -> Store:
    """The deployment's SQS queues, found (not created) as its stack made them, its S3
    bucket, and reply queues `<name>-replies-*` created by the web process that owns one."""
    from .queues.sqs import SqsQueue
    from .replies import SqsReplies

    sqs = aws_client("sqs", settings)
    requests = SqsQueue(sqs, f"{settings.name}-{REQUESTS}", max_receives=settings.max_receives, create=False)
    return Store(
        requests=requests,
        blobs=blobs(settings),
        replies=SqsReplies(sqs, f"{settings.name}-replies"),
        deliveries=SqsQueue(sqs, f"{settings.name}-{WEBHOOKS}", create=False),
    )


def embedded(settings: Settings) -> Store:
    """SQLite queue file, a directory store and reply sockets, all under `settings.data_dir`."""
    return Store(
        # A file lock held longer than store_timeout_s (a backup, a stuck process) is an error
        # the caller reports (503 at intake), not a request hanging for minutes.
        requests=SqliteQueue(
            settings.queue_path,
            REQUESTS,
            max_receives=settings.max_receives,
            lock_timeout_s=settings.store_timeout_s,
        ),
        blobs=blobs(settings),
        replies=SocketReplies(settings.data_dir),
        deliveries=SqliteQueue(settings.queue_path, WEBHOOKS, lock_timeout_s=settings.store_timeout_s),
    )


def make_fleet(settings: Settings) -> Fleet:
    """EC2 instances from the deployment's launch template, or local worker processes."""
    if settings.backend == "aws":
        from .fleet.ec2 import Ec2Fleet

        template = settings.launch_template or f"{settings.name}-worker"
        return Ec2Fleet(aws_client("ec2", settings), settings.name, template, warm_pool=settings.warm_pool)
    from .fleet.local import LocalFleet

    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = worker_env(settings, os.environ) | {"IRAAS_PARENT_PID": str(os.getpid())}
    return LocalFleet(env, log_dir=str(logs), warm_start=settings.warm_start)
