"""The composition root: queues, blob stores, reply channels, fleets and AWS clients, built
once at start-up from the settings and passed in explicitly."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .blobs.base import BlobStore
from .config import WORKER, Settings, process_env
from .duty import Duty, SoleDuty
from .faces.gallery import GalleryStore
from .fleet.base import Fleet
from .lifecycle.callbacks import Callbacks
from .lifecycle.cluster import Cluster
from .lifecycle.ids import RequestIds
from .lifecycle.results import Results
from .queues.base import Queue
from .replies import Replies
from .stores import local_disk, open_blobs, open_stores

if TYPE_CHECKING:  # the tiers are imported where they are made: `iraas keys` needs none of them
    from fastapi import FastAPI

    from .autoscale import Policy
    from .cloudwatch import MetricsSink
    from .controller import Controller
    from .model.recognizer import Recognizer
    from .web.service import WebParts
    from .webhooks.deliver import Deliverer
    from .worker import Worker

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
    return open_blobs(settings, lambda service: aws_client(service, settings))


@dataclass(frozen=True)
class Parts:
    """A deployment's parts, each named; every component is given the few it uses."""

    requests: Queue
    deliveries: Queue | None  # the webhooks' own queue
    blobs: BlobStore
    replies: Replies
    ids: RequestIds
    results: Results
    callbacks: Callbacks
    cluster: Cluster
    gallery: GalleryStore
    duty: Duty  # whether this process does the once-per-deployment duties now


def assemble(
    *,
    requests: Queue,
    blobs: BlobStore,
    replies: Replies,
    deliveries: Queue | None = None,
    duty: Duty | None = None,
    clock: Callable[[], float] = time.time,
    durable_inputs: bool = False,
) -> Parts:
    """The lifecycle's parts over these backends: the results' final hook queues webhooks, and
    the gallery's version keys the faces model's answers. `durable_inputs`: see Results."""
    ids = RequestIds(blobs, clock)
    callbacks = Callbacks(deliveries=deliveries, blobs=blobs, clock=clock)
    gallery = GalleryStore(blobs, clock)
    results = Results(
        requests=requests,
        blobs=blobs,
        ids=ids,
        clock=clock,
        on_final=callbacks.on_final,
        model_version=gallery.model_version,
        durable_inputs=durable_inputs,
    )
    cluster = Cluster(blobs)
    return Parts(requests, deliveries, blobs, replies, ids, results, callbacks, cluster, gallery, duty or SoleDuty())


def build(settings: Settings) -> Parts:
    """The parts over the stores the settings name (`queue`, `blobs`, or `backend`'s)."""
    stores = open_stores(settings, lambda service: aws_client(service, settings))
    return assemble(
        requests=stores.requests,
        blobs=stores.blobs,
        replies=stores.replies,
        deliveries=stores.deliveries,
        duty=stores.duty,
        durable_inputs=settings.power_safe,
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
    env = process_env(settings, WORKER, os.environ)
    return LocalFleet(env, parent=os.getpid(), log_dir=str(logs), warm_start=settings.warm_start)


# -- each component with the parts it uses and its own few settings ---------------------------


C = TypeVar("C")


def picked(cls: type[C], settings: Settings, **given: Any) -> C:
    """A component's config: each of its fields from the setting of the same name, but `given`."""
    names = {f.name for f in dataclasses.fields(cls)} - set(given)  # type: ignore[arg-type]
    return cls(**{name: getattr(settings, name) for name in names}, **given)


def make_worker(
    parts: Parts, recognizer: Recognizer, settings: Settings, worker_id: str | None = None, **kw: Any
) -> Worker:
    from .messages import FACES
    from .worker import Worker, WorkerConfig

    config = picked(WorkerConfig, settings)
    if settings.autoscaling_group and worker_id and "protection" not in kw:
        from .fleet.asg import ScaleInProtection

        # released after five idle heartbeats: a pause between two batches keeps it
        client = aws_client("autoscaling", settings)
        kw["protection"] = ScaleInProtection(client, settings.autoscaling_group, worker_id, 5 * settings.heartbeat_s)
    return Worker(
        requests=parts.requests,
        results=parts.results,
        cluster=parts.cluster,
        replies=parts.replies,
        recognizer=recognizer,
        config=config,
        enrolments=parts.gallery if settings.model == FACES else None,
        worker_id=worker_id,
        **kw,
    )


def policy_from(settings: Settings) -> Policy:
    from .autoscale import Policy

    return picked(Policy, settings)


def make_controller(
    parts: Parts,
    fleet: Fleet | None,
    settings: Settings,
    clock: Callable[[], float] = time.time,
    counters: Callable[[], dict[str, int]] | None = None,
) -> Controller:
    """`fleet` None: a host without workers, that may still hold the deployment's duties;
    `counters`: the other duties' counters, for the metrics (the webhooks given up)."""
    from .access.quota import expire_usage
    from .controller import Controller, ControllerConfig

    config = picked(ControllerConfig, settings, policy=policy_from(settings))

    def sweep() -> int:
        now = clock()
        removed = parts.results.expire(input_ttl_s=settings.input_ttl_s, result_ttl_s=settings.result_ttl_s)
        removed += parts.callbacks.expire(settings.result_ttl_s)
        return removed + expire_usage(parts.blobs, now)

    return Controller(
        requests=parts.requests,
        results=parts.results,
        cluster=parts.cluster,
        replies=parts.replies,
        fleet=fleet,
        config=config,
        sweep=sweep,
        duty=parts.duty,
        metrics=make_metrics(settings),
        counters=counters or dict,
        clock=clock,
    )


def make_metrics(settings: Settings) -> MetricsSink | None:
    """On AWS, CloudWatch (unless `metrics_every_s` is 0); elsewhere /metrics is scraped instead."""
    if settings.backend != "aws" or settings.metrics_every_s <= 0:
        return None
    from .cloudwatch import CloudWatchMetrics

    return CloudWatchMetrics(aws_client("cloudwatch", settings), settings.name, settings.metrics_every_s)


def make_deliverer(parts: Parts, settings: Settings, **kw: Any) -> Deliverer:
    from .signing import secret_keys
    from .webhooks.deliver import Deliverer, DeliveryConfig

    if parts.deliveries is None:
        raise ValueError("this deployment has no deliveries queue")
    config = DeliveryConfig(
        keys=tuple(secret_keys(settings.webhook_secret)),
        timeout_s=settings.webhook_timeout_s,
        backoff_s=settings.webhook_backoff_s,
        backoff_max_s=settings.webhook_backoff_max_s,
        retry_for_s=settings.webhook_retry_for_s,
        concurrency=settings.webhook_concurrency,
        url_allow=settings.url_allow,
    )
    return Deliverer(deliveries=parts.deliveries, callbacks=parts.callbacks, config=config, duty=parts.duty, **kw)


def web_parts(
    settings: Settings,
    parts: Parts,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> WebParts:
    """What the web tier is given; `clock` and `monotonic`: the keys' cache and the quotas' time."""
    from .access.keys import KeyRing
    from .access.quota import Quotas
    from .web.service import WebParts

    return WebParts(
        requests=parts.requests,
        ids=parts.ids,
        results=parts.results,
        replies=parts.replies,
        callbacks=parts.callbacks,
        cluster=parts.cluster,
        keys=KeyRing(parts.blobs, clock=clock, monotonic=monotonic),
        quotas=Quotas(parts.blobs, clock=clock, monotonic=monotonic),
        disk=local_disk(settings),
    )


def make_app(
    settings: Settings,
    parts: Parts,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    **kw: Any,
) -> FastAPI:
    """The web tier over these parts, with the gallery's routes when the faces model is served."""
    from .faces.routes import gallery_routes
    from .messages import FACES
    from .web.app import create_app

    mounts = [gallery_routes(parts.gallery)] if settings.model == FACES else []
    return create_app(settings, web_parts(settings, parts, clock, monotonic), mounts=mounts, **kw)
