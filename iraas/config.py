"""One frozen Settings object, read once at start-up: defaults < config file < IRAAS_* env < flags."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .logs import FORMATS
from .signing import secret_keys

if TYPE_CHECKING:
    from .imaging import Limits


@dataclass(frozen=True)
class Settings:
    # where and how
    data_dir: Path = Path("iraas-data")
    host: str = "127.0.0.1"
    port: int = 8000
    model: str = "efficientnet-lite0"
    # backends: "embedded" (SQLite + directory under data_dir) or "aws" (SQS + S3 + EC2)
    backend: str = "embedded"
    name: str = "iraas"  # AWS deployment name: queues <name>-requests, <name>-replies-*, tags
    bucket: str = ""  # AWS: the deployment's S3 bucket
    aws_region: str = ""
    aws_endpoint_url: str = ""  # moto, LocalStack; empty for AWS itself
    launch_template: str = ""  # AWS: worker launch template (default <name>-worker)
    # faces
    gallery: str = ""  # model "faces": a folder per person, or a gallery file
    face_threshold: float = 0.0  # below this similarity the answer is "unknown"; 0 = off
    # web tier: every limit a client can meet is documented in docs/security.md
    max_file_bytes: int = 20 * 1024 * 1024
    max_files: int = 100
    max_request_bytes: int = 50 * 1024 * 1024  # the whole body, all files together
    spool_bytes: int = 1024 * 1024  # an upload past this waits on disk, not in RAM
    max_json_bytes: int = 64 * 1024
    max_pixels: int = 50_000_000
    max_side: int = 20_000
    max_aspect: float = 20.0
    timeout_s: float = 60.0
    # the course contract (docs/service.md): where its clients POST and what they expect back
    course_paths: tuple[str, ...] = ("/",)
    course_reply: str = "name:label"  # "name:label" (2024 clients) | "label" (2022 faces clients)
    url_allow: tuple[str, ...] = ()  # hosts or CIDRs that URL intake may reach despite being private
    url_timeout_s: float = 10.0  # the whole fetch of one URL, redirects included
    max_fetches: int = 16  # URL fetches in flight per web process
    max_connections: int = 1000  # open connections per web process; past it 503
    header_timeout_s: float = 10.0  # a request's headers must arrive within this
    body_timeout_s: float = 30.0  # the longest pause while a body arrives
    max_backlog: int = 10_000  # images waiting; past it new work is refused (503); 0 = no limit
    store_timeout_s: float = 5.0  # a locked queue file refuses new work (503) after this
    min_free_bytes: int = 256 * 1024 * 1024  # below this free on the data disk: not ready, 503
    # access (docs/security.md): "auto" requires API keys once one exists or off loopback
    auth: str = "auto"  # "auto" | "required" | "off" (--no-auth)
    anonymous_course: bool = False  # POST / (the course contract) without a key, rate limited
    allowed_hosts: tuple[str, ...] = ()  # Host names served; default: loopback names on loopback
    allowed_origins: tuple[str, ...] = ()  # other sites' origins allowed to POST (browser pages)
    requests_per_s: float = 20.0  # per key, and for anonymous course callers together
    images_per_s: float = 50.0
    images_per_day: int = 100_000
    burst_s: float = 10.0  # a key may spend this many seconds of its rates at once
    # results that come to you (docs/integrating.md): signed webhooks
    webhook_secret: str = ""  # whsec_<base64>; several (space-separated) all sign, for a rotation
    webhook_secret_arn: str = ""  # AWS: the Secrets Manager secret holding it, read at start
    webhook_timeout_s: float = 10.0  # one delivery attempt, connection included
    webhook_backoff_s: float = 5.0  # the first retry's delay; doubled each time, with jitter
    webhook_backoff_max_s: float = 3600.0
    webhook_retry_for_s: float = 86_400.0  # retries stop this long after the result was final
    webhook_concurrency: int = 16  # deliveries in flight per delivering process
    log_format: str = "text"  # text | json (one object per line)
    # retention (embedded store; the S3 lifecycle rules of the AWS template say the same)
    input_ttl_s: float = 86_400.0
    result_ttl_s: float = 7 * 86_400.0
    # queue semantics
    # a dead worker's messages come back after this (the worker extends it while it works)
    visibility_s: int = 10
    max_receives: int = 3
    # worker
    batch_size: int = 4
    batch_wait_s: float = 0.0
    threads: int = 1
    heartbeat_s: float = 1.0
    worker_max_idle_s: float = 0.0  # 0: run until stopped (the controller scales in)
    # controller
    warm_start: bool = True  # fork local workers from a template process (its RSS: docs/service.md)
    warm_pool: int = 0  # AWS: scaled-in workers kept stopped, up to this many, to start in seconds
    min_workers: int = 0
    max_workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    target_per_worker: int = 8  # backlog one worker should hold (HPA target value)
    scale_in_after_s: float = 10.0  # stabilisation window before stopping idle workers
    tick_s: float = 0.25
    heartbeat_stale_s: float = 15.0
    start_grace_s: float = 30.0

    @property
    def image_limits(self) -> Limits:
        from .imaging import Limits  # numpy and Pillow: not for every CLI start

        return Limits(max_pixels=self.max_pixels, max_side=self.max_side, max_aspect=self.max_aspect)

    @property
    def queue_path(self) -> Path:
        return self.data_dir / "queue.db"

    @property
    def blob_root(self) -> Path:
        return self.data_dir / "blobs"


def _coerce(name: str, kind: Any, raw: Any) -> Any:
    kind = str(kind)
    try:
        if "tuple" in kind:
            return tuple(x.strip() for x in raw.split(",") if x.strip()) if isinstance(raw, str) else tuple(raw)
        if "Path" in kind:
            return Path(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return _boolean(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise ValueError(f"setting {name}: cannot use {raw!r}") from None


def _boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError(raw)
    return text in ("1", "true", "yes", "on")


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Defaults, then the TOML file (IRAAS_CONFIG if not given), then IRAAS_<NAME> variables,
    then `overrides` (flags; None means "not given")."""
    values: dict[str, Any] = {}
    kinds = {f.name: f.type for f in fields(Settings)}
    path = config_file or os.environ.get("IRAAS_CONFIG")
    if path:
        with open(path, "rb") as f:
            for key, raw in tomllib.load(f).items():
                if key not in kinds:
                    raise ValueError(f"{path}: unknown setting {key!r}")
                values[key] = _coerce(key, kinds[key], raw)
    for key, kind in kinds.items():
        env = os.environ.get(f"IRAAS_{key.upper()}")
        if env is not None:
            values[key] = _coerce(key, kind, env)
    for key, raw in overrides.items():
        if raw is not None:
            values[key] = _coerce(key, kinds[key], raw)
    settings = Settings(**values)
    if not 0 <= settings.min_workers <= settings.max_workers:
        raise ValueError("need 0 <= min_workers <= max_workers")
    if not 0 <= settings.warm_pool <= settings.max_workers:
        raise ValueError("need 0 <= warm_pool <= max_workers")
    if settings.auth not in ("auto", "required", "off"):
        raise ValueError(f"auth must be auto, required or off, not {settings.auth!r}")
    if settings.backend not in ("embedded", "aws"):
        raise ValueError(f"backend must be embedded or aws, not {settings.backend!r}")
    if settings.course_reply not in COURSE_REPLIES:
        raise ValueError(f"course_reply must be {' or '.join(COURSE_REPLIES)}, not {settings.course_reply!r}")
    for path in settings.course_paths:
        _check_course_path(path)
    secret_keys(settings.webhook_secret)
    if settings.log_format not in FORMATS:
        raise ValueError(f"log_format must be {' or '.join(FORMATS)}, not {settings.log_format!r}")
    if settings.webhook_concurrency < 1 or settings.webhook_backoff_s <= 0:
        raise ValueError("need webhook_concurrency >= 1 and webhook_backoff_s > 0")

    return settings


COURSE_REPLIES = ("name:label", "label")
# The service's own routes: a course path may not shadow them.
_RESERVED = ("/v1/", "/static/", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/redoc")


def _check_course_path(path: str) -> None:
    ok = path.startswith("/") and all(c.isalnum() or c in "/-_." for c in path) and "//" not in path
    if not ok or ".." in path:
        raise ValueError(f"course_paths: {path!r} is not a plain URL path such as /upload")
    if any(path == r.rstrip("/") or path.startswith(r) for r in _RESERVED):
        raise ValueError(f"course_paths: {path!r} is one of the service's own routes")


# Only the delivering process needs the secret (or where to read it): never handed on.
SECRETS = ("webhook_secret", "webhook_secret_arn")


def worker_env(settings: Settings, inherited: Mapping[str, str]) -> dict[str, str]:
    """A worker process's whole environment: `inherited` (this process's) and the settings as
    IRAAS_* variables, the secret left out of both (it may have come as a variable)."""
    hidden = {f"IRAAS_{k.upper()}" for k in SECRETS}
    out = {k: v for k, v in inherited.items() if k not in hidden}
    for key, value in dataclasses.asdict(settings).items():
        if key not in SECRETS:
            out[f"IRAAS_{key.upper()}"] = ",".join(value) if isinstance(value, tuple) else str(value)
    return out
