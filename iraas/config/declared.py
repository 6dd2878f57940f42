"""Every setting, declared once: its type, default, help and the processes that take it
(`setting(...)` below); `iraas.config` derives the rest (flags, the environment, loading)."""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..imaging import ImageLimits

# The processes a setting is for: `iraas up` takes every one of the three; `iraas keys` reads
# the store. A setting of a process's own parts: the controller also takes the settings of the
# workers it starts (they are handed on in the workers' environment).
WEB, WORKER, CONTROLLER, KEYS, UP = "web", "worker", "controller", "keys", "up"
PROCESSES = {
    UP: (WEB, WORKER, CONTROLLER, UP),
    WEB: (WEB,),
    WORKER: (WORKER,),
    CONTROLLER: (CONTROLLER,),
    KEYS: (KEYS,),
}
ROLES = ("all", "web", "workers", "duties")


def setting(
    default: Any = MISSING,
    help: str = "",
    takes: set[str] | None = None,
    *,
    factory: Any = MISSING,
    flag: str = "value",
    negated: str = "",
) -> Any:
    """One setting. `flag`: "value" (--name VALUE), "switch" (--name sets it true) or "negate"
    (--no-name sets it false; `negated` is that flag's help)."""
    meta = {"help": help, "takes": frozenset(takes or ()), "flag": flag, "negated": negated}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    # where and how
    role: str = setting(
        "all",
        "what this host runs: all (web tier, controller, workers; default), web (the web tier; several "
        "hosts behind any load balancer), workers (a worker pool, 0 to --max-workers, on the shared "
        "backlog) or duties (only the deployment's once-only duties: where workers are started by another "
        "scaler, KEDA on Kubernetes); on PostgreSQL one process at a time does the duties, whichever host",
        {UP},
    )
    data_dir: Path = setting(  # noqa: RUF009 (a field(): `setting` returns one)
        Path("iraas-data"),
        "embedded queue file and blob directory (default ./iraas-data)",
        {WEB, WORKER, CONTROLLER, KEYS},
    )
    host: str = setting("127.0.0.1", "address to listen on (default 127.0.0.1)", {WEB})
    port: int = setting(8000, "port to listen on (default 8000)", {WEB})
    model: str = setting(
        "efficientnet-lite0",
        "built-in model name (efficientnet-lite0 [default], -lite1, -lite2), faces (with --gallery), "
        "or a model spec file (TOML/JSON)",
        {WEB, WORKER, CONTROLLER},
    )
    # backends: "embedded" (SQLite + directory under data_dir) or "aws" (SQS + S3 + EC2)
    backend: str = setting(
        "embedded",
        "embedded (SQLite + directory, local processes; default) or aws (SQS + S3 + EC2)",
        {WEB, WORKER, CONTROLLER, KEYS},
    )
    name: str = setting(
        "iraas",
        "AWS deployment name: queues <name>-requests…, instance tags (default iraas)",
        {WEB, WORKER, CONTROLLER, KEYS},
    )
    bucket: str = setting(
        "", "AWS: the deployment's S3 bucket (iraas aws status prints it)", {WEB, WORKER, CONTROLLER, KEYS}
    )
    aws_region: str = setting("", "AWS region (default: the AWS SDK's)", {WEB, WORKER, CONTROLLER, KEYS})
    aws_endpoint_url: str = setting(
        "", "AWS endpoint override, for moto or LocalStack", {WEB, WORKER, CONTROLLER, KEYS}
    )
    queue: str = setting(
        "",
        "the queue's URL: sqlite:///path/queue.db, postgresql://user@host:5432/db or sqs:// "
        "(default: by --backend; a password in it is never shown, PGPASSFILE or PG* variables keep it out)",
        {WEB, WORKER, CONTROLLER},
    )
    blobs: str = setting(
        "",
        "the blob store's URL: file:///dir, postgresql://user@host:5432/db, s3://bucket or "
        "s3://bucket?endpoint_url=… for any S3-compatible store (default: by --backend)",
        {WEB, WORKER, CONTROLLER, KEYS},
    )
    launch_template: str = setting("", "AWS: worker launch template (default <name>-worker)", {CONTROLLER})
    # faces
    gallery: str = setting(
        "",
        "model faces: a folder per person (GALLERY/<name>/*.jpg, enrolled incrementally) or a gallery file",
        {WEB, CONTROLLER},
    )
    face_threshold: float = setting(
        0.0, "faces: answer unknown below this similarity (default 0: off)", {WORKER, CONTROLLER}
    )
    # web tier: every limit a client can meet is documented in docs/security.md
    max_file_bytes: int = setting(20 * 1024 * 1024, "largest accepted image, bytes (default 20 MiB)", {WEB})
    max_files: int = setting(100, "most images per request (default 100)", {WEB})
    max_request_bytes: int = setting(
        50 * 1024 * 1024, "largest request body, all files together, bytes (default 50 MiB)", {WEB}
    )
    spool_bytes: int = setting(
        1024 * 1024, "an upload past this many bytes waits on disk, not in RAM (default 1 MiB)", {WEB}
    )
    max_json_bytes: int = setting(64 * 1024, "largest JSON body, bytes (default 64 KiB)", {WEB})
    max_pixels: int = setting(
        50_000_000, "largest accepted image, pixels (default 50,000,000)", {WEB, WORKER, CONTROLLER}
    )
    max_side: int = setting(20_000, "longest accepted image side, pixels (default 20,000)", {WEB, WORKER, CONTROLLER})
    max_aspect: float = setting(
        20.0, "most an image's long side may exceed its short side, times (default 20)", {WEB, WORKER, CONTROLLER}
    )
    timeout_s: float = setting(60.0, "how long a waiting request waits for its answers (default 60)", {WEB})
    # the course contract (docs/service.md): where its clients POST and what they expect back
    course_paths: tuple[str, ...] = setting(
        ("/",), "comma-separated URL paths of the course contract's POST (default /), e.g. /,/upload", {WEB}
    )
    course_reply: str = setting(
        "name:label",
        "what a course POST answers: name:label (2024 clients; default) or label (2022 faces clients)",
        {WEB},
    )
    url_allow: tuple[str, ...] = setting(
        (), "comma-separated hosts or CIDRs that URL intake may fetch despite being private", {WEB, CONTROLLER}
    )
    url_timeout_s: float = setting(
        10.0, "deadline for fetching one image URL, redirects included, seconds (default 10)", {WEB}
    )
    max_fetches: int = setting(16, "URL fetches in flight per web process (default 16)", {WEB})
    max_connections: int = setting(1000, "open connections per web process; past it 503 (default 1000)", {WEB})
    header_timeout_s: float = setting(10.0, "a request's headers must arrive within this, seconds (default 10)", {WEB})
    linger_s: float = setting(
        5.0,
        "a refused connection (past max_connections, slow or huge headers) reads and drops what the "
        "client still sends for up to this long before closing, so that it reads its refusal, not a "
        "reset (default 5)",
        {WEB},
    )
    body_timeout_s: float = setting(30.0, "longest pause while a request body arrives, seconds (default 30)", {WEB})
    max_backlog: int = setting(
        10_000, "images waiting past which new work gets 503 + Retry-After; 0 = no limit (default 10,000)", {WEB}
    )
    store_timeout_s: float = setting(
        5.0, "a locked queue file refuses new work (503) after this, seconds (default 5)", {WEB, WORKER, CONTROLLER}
    )
    durability: str = setting(
        "process",
        "what an accepted image survives on the embedded store: process (any process's crash, kill -9"
        " included; the default: a power cut may lose the last moments' uploads) or power (a power cut"
        " or a kernel crash too: the intake waits for the disk before it answers, docs/service.md)."
        " PostgreSQL and AWS: power, either way",
        {WEB},
    )
    min_free_bytes: int = setting(
        256 * 1024 * 1024, "below this free on the data disk: not ready, uploads 507 (default 256 MiB)", {WEB}
    )
    # access (docs/security.md): "auto" requires API keys once one exists or off loopback
    auth: str = setting(
        "auto", "API keys: auto (required once a key exists or off loopback; default), required, or off", {WEB}
    )
    anonymous_course: bool = setting(
        False,
        "let POST / (the course clients' contract) be used without a key, rate limited like one key",
        {WEB},
        flag="switch",
    )
    allowed_hosts: tuple[str, ...] = setting(
        (), "comma-separated Host names served (default: loopback names on loopback, any otherwise)", {WEB}
    )
    allowed_origins: tuple[str, ...] = setting(
        (), "comma-separated origins of other sites' pages allowed to POST (default none)", {WEB}
    )
    requests_per_s: float = setting(
        20.0, "requests per second per key (and for anonymous course callers together) (default 20)", {WEB}
    )
    images_per_s: float = setting(50.0, "images per second per key (default 50)", {WEB})
    images_per_day: int = setting(100_000, "images per key per UTC day (default 100,000)", {WEB})
    burst_s: float = setting(10.0, "a key may spend this many seconds of its rates at once (default 10)", {WEB})
    # results that come to you (docs/integrating.md): signed webhooks
    webhook_secret: str = setting(
        "",
        "whsec_… key that signs webhooks (several, space-separated, all sign: a rotation); "
        "pass it as IRAAS_WEBHOOK_SECRET, not a flag others can read in ps (iraas webhook-secret makes one)",
        {WEB, CONTROLLER},
    )
    webhook_secret_arn: str = setting(
        "",
        "AWS: the Secrets Manager secret that holds the webhook secret, read at start "
        "(iraas aws deploy makes one per deployment and sets this)",
        {WEB, CONTROLLER},
    )
    webhook_timeout_s: float = setting(10.0, "one webhook delivery attempt, seconds (default 10)", {CONTROLLER})
    webhook_backoff_s: float = setting(
        5.0, "delay before a webhook's first retry, doubled each time, with jitter (default 5)", {CONTROLLER}
    )
    webhook_backoff_max_s: float = setting(
        3600.0, "longest delay between two webhook attempts, seconds (default 3600)", {CONTROLLER}
    )
    webhook_retry_for_s: float = setting(
        86_400.0, "webhook retries stop this long after the result, seconds (default 1 day)", {CONTROLLER}
    )
    webhook_concurrency: int = setting(16, "webhook deliveries in flight (default 16)", {CONTROLLER})
    log_format: str = setting(
        "text",
        "text (default) or json: one object per line, with request_id and traceparent",
        {WEB, WORKER, CONTROLLER},
    )
    # retention (embedded store; the S3 lifecycle rules of the AWS template say the same)
    input_ttl_s: float = setting(
        86_400.0, "embedded store: uploaded images are deleted after this, seconds (default 1 day)", {CONTROLLER}
    )
    result_ttl_s: float = setting(
        7 * 86_400.0, "embedded store: results are deleted after this, seconds (default 7 days)", {WEB, CONTROLLER}
    )
    # queue semantics
    # a dead worker's messages come back after this (the worker extends it while it works)
    visibility_s: int = setting(
        10,
        "seconds a received request stays hidden before a retry; a live worker extends it (default 10)",
        {WORKER, CONTROLLER},
    )
    max_receives: int = setting(
        3, "deliveries before a request is given up as failed (default 3)", {WEB, WORKER, CONTROLLER}
    )
    # worker
    batch_size: int = setting(
        4, "most requests a worker takes at once, 1-10 (default 4: as fast per image as 8)", {WORKER, CONTROLLER}
    )
    batch_wait_s: float = setting(
        0.0, "extra wait for a fuller batch once one request arrived (default 0)", {WORKER, CONTROLLER}
    )
    threads: int = setting(1, "model threads per worker process (default 1)", {WORKER, CONTROLLER})
    idle_threads: int = setting(
        0,
        "model threads for an image while that many cores are free, as when requests come one at a "
        "time (default 0: the cores the worker may use, within its container's CPU limit, up to 4; "
        "1: never more than --threads); classifier models",
        {WORKER, CONTROLLER},
    )
    runtime: str = setting(
        "",
        "where the model runs: onnxruntime (default, the exact reference) or openvino (pip install "
        "'iraas[openvino]'); `iraas bench model --runtimes all` measures both here; for the faces "
        "model, where its embedding network runs (default: OpenCV's engine)",
        {WORKER, CONTROLLER},
    )
    precision: str = setting(
        "",
        "fp32 (default) or bf16 (openvino, on a CPU that computes it natively); a quantized model "
        "(iraas quantize) is int8",
        {WORKER, CONTROLLER},
    )
    heartbeat_s: float = setting(1.0, "seconds between worker heartbeats (default 1)", {WORKER, CONTROLLER})
    worker_max_idle_s: float = setting(
        0.0, "a worker exits after this long idle; 0 = never (default 0)", {WORKER, CONTROLLER}
    )
    # controller
    warm_start: bool = setting(
        True,
        "fork local workers from a template process that has loaded the model (default on)",
        {CONTROLLER},
        flag="negate",
        negated="start each local worker as a new interpreter (~0.5 s), with no template process",
    )
    warm_pool: int = setting(
        0,
        "AWS: scaled-in workers kept stopped (disk cost only), to start in seconds; at most (default 0)",
        {CONTROLLER},
    )
    scaler: str = setting(
        "controller",
        "who starts and stops workers: controller (this process; default) or external (KEDA, an EC2 Auto "
        "Scaling group: the controller keeps only the deployment's once-only duties)",
        {UP},
    )
    autoscaling_group: str = setting(
        "",
        "AWS: the Auto Scaling group this worker's instance is in: it protects itself from scale-in while it "
        "works (the stack sets it with --scaler asg)",
        {WORKER},
    )
    min_workers: int = setting(0, "workers kept running when idle (default 0)", {CONTROLLER})
    max_workers: int = setting(
        MISSING, "most workers (default: CPU count)", {CONTROLLER}, factory=lambda: os.cpu_count() or 1
    )
    target_per_worker: int = setting(
        8, "backlog one worker should hold before another is started (default 8)", {CONTROLLER}
    )
    scale_in_after_s: float = setting(10.0, "idle period before workers are stopped (default 10)", {CONTROLLER})
    target_wait_s: float = setting(
        0.0,
        "size the fleet so the backlog drains within this many seconds at the workers' measured rate, "
        "in place of --target-per-worker; 0 = off (default 0)",
        {CONTROLLER},
    )
    cpu_high: float = setting(
        0.0,
        "also scale out while the workers' average CPU (0..1) is at least this and requests wait, and "
        "scale in only below --cpu-low with nothing waiting; 0 = off (default 0)",
        {CONTROLLER},
    )
    cpu_low: float = setting(
        0.3, "with --cpu-high: CPU (0..1) below which workers may be stopped (default 0.3)", {CONTROLLER}
    )
    tick_s: float = setting(0.25, "seconds between controller decisions (default 0.25)", {CONTROLLER})
    metrics_every_s: float = setting(
        60.0,
        "AWS: seconds between the controller's puts of its figures to CloudWatch (namespace iraas, one "
        "request for all of them); 0 = none (default 60)",
        {CONTROLLER},
    )
    heartbeat_stale_s: float = setting(15.0, "a worker silent this long is replaced (default 15)", {CONTROLLER})
    start_grace_s: float = setting(30.0, "time a new worker has to send its first heartbeat (default 30)", {CONTROLLER})

    @property
    def image_limits(self) -> ImageLimits:
        from ..imaging import ImageLimits  # numpy and Pillow: not for every CLI start

        return ImageLimits(max_pixels=self.max_pixels, max_side=self.max_side, max_aspect=self.max_aspect)

    @property
    def power_safe(self) -> bool:
        """The intake waits for the disk before it answers (`durability` "power")."""
        return self.durability == "power"

    @property
    def queue_path(self) -> Path:
        return self.data_dir / "queue.db"

    @property
    def blob_root(self) -> Path:
        return self.data_dir / "blobs"
