"""Prometheus metrics of one web process (its own registry: several apps can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)


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
        self.batch = Histogram(
            "iraas_batch_size", "Images per inference batch", registry=r, buckets=(1, 2, 4, 8, 16, 32)
        )
        self.dedup = Counter("iraas_dedup_hits", "Images answered from a stored result", registry=r)
        self.queue = Gauge("iraas_queue_depth", "Request queue depth", ["state"], registry=r)
        self.workers = Gauge("iraas_workers", "Workers by state", ["state"], registry=r)
