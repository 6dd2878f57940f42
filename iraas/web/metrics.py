"""Prometheus metrics of one web process (its own registry: several apps can share a process).

What this process sees itself (HTTP requests, every answer replied to it, with its stage
times) is counted here; what other processes count (the controller's dead letters, the
webhook deliveries) comes from their published status at each scrape (`Shared`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..messages import OUTCOMES, ClusterStatus, Result
from .cluster import ClusterView

_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
_STAGE = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
STAGES = ("queued", "fetch", "decode", "inference", "store")


class Shared(Collector):
    """Counters kept by other processes, as last published: set `view` (the cluster view
    /v1/cluster gives an admin) before a scrape."""

    def __init__(self) -> None:
        self.view = ClusterView(ClusterStatus())

    def collect(self) -> Iterator[Metric]:
        view = self.view
        dead = CounterMetricFamily("iraas_dead_letters", "Requests given up after max_receives deliveries")
        dead.add_metric([], float(view.status.dead_letters_total))
        yield dead
        hooks = CounterMetricFamily(
            "iraas_webhook_deliveries", "Webhook delivery attempts by outcome", labels=["outcome"]
        )
        webhooks = view.webhooks or {}
        for outcome in OUTCOMES:
            hooks.add_metric([outcome], float(webhooks.get("outcomes", {}).get(outcome, 0)))
        yield hooks
        backlog = GaugeMetricFamily("iraas_webhook_backlog", "Webhooks waiting for delivery or a retry")
        backlog.add_metric([], float(webhooks.get("backlog", 0)))
        yield backlog
        age = view.depth.oldest_age_s if view.depth is not None else None
        if age is not None:  # not on SQS (CloudWatch has it)
            oldest = GaugeMetricFamily("iraas_queue_oldest_age_seconds", "Age of the oldest request not yet answered")
            oldest.add_metric([], float(age))
            yield oldest
        yield from _load(view.status.load)


# The scaling signals the controller measured (iraas/autoscale/signals.py), when it has them.
_LOAD = (
    ("cpu", "iraas_worker_cpu_ratio", "The workers' average CPU use over their last heartbeat, of their cores"),
    ("rate", "iraas_worker_rate_images_per_second", "Images a second one busy worker handles, as measured"),
    ("start_s", "iraas_worker_start_seconds", "How long a new worker takes to start, as measured"),
    ("drain_s", "iraas_drain_seconds", "The backlog at the measured rate, with the workers there are"),
)


def _load(load: dict[str, float | None]) -> Iterator[Metric]:
    for key, name, doc in _LOAD:
        value = load.get(key)
        if value is not None:
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], float(value))
            yield gauge


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "iraas_http_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.images = Counter("iraas_images", "Images answered, by final status", ["status"], registry=r)
        self.latency = Histogram(
            "iraas_image_latency_seconds", "Submit-to-answer time per image", registry=r, buckets=_LATENCY
        )
        self.inference = Histogram(
            "iraas_inference_seconds",
            "Model time per image",
            registry=r,
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1),
        )
        self.stages = Histogram(
            "iraas_stage_seconds",
            "Time per image in each stage: queued, fetch (of its bytes), decode, inference, store (of its result)",
            ["stage"],
            registry=r,
            buckets=_STAGE,
        )
        self.batch = Histogram(
            "iraas_batch_size", "Images per inference batch", registry=r, buckets=(1, 2, 4, 8, 16, 32)
        )
        self.dedup = Counter("iraas_dedup_hits", "Images answered from a stored result", registry=r)
        self.queue = Gauge("iraas_queue_depth", "Request queue depth", ["state"], registry=r)
        self.workers = Gauge("iraas_workers", "Workers by state", ["state"], registry=r)
        self.shared = Shared()
        r.register(self.shared)
        self._children: dict[tuple[Any, ...], Any] = {}

    def scraped(self, view: ClusterView) -> None:
        """Before a scrape: the gauges and the other processes' counters from `view`."""
        queue = view.queue()
        for state in ("visible", "in_flight", "delayed"):
            self.queue.labels(state).set(queue.get(state, 0))
        counts: dict[str, int] = {"idle": 0, "busy": 0, "starting": 0, "stopping": 0}
        for w in view.status.workers:
            counts[w.state] = counts.get(w.state, 0) + 1
        for state, n in counts.items():
            self.workers.labels(state).set(n)
        self.shared.view = view

    def observe(self, result: Result) -> None:
        """One final answer (thread-safe: the reply thread calls it)."""
        self.labelled(self.images, result.status).inc()
        t = result.timings
        if "total" in t:
            self.latency.observe(t["total"])
        if result.cached:
            return
        if "inference" in t:
            self.inference.observe(t["inference"])
            self.batch.observe(t.get("batch", 1))
        for stage in STAGES:
            if stage in t:
                self.labelled(self.stages, stage).observe(t[stage])

    def labelled(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, kept: the client looks it up under a lock on every call."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child
