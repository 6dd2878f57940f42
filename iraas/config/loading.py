"""Reading the settings: defaults < config file < IRAAS_* env < flags, checked once; and what a
process's environment and command line are made of, from the declaration."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import Field, fields
from pathlib import Path
from typing import Any

from ..logs import FORMATS
from ..signing import secret_keys
from .declared import PROCESSES, ROLES, Settings


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
        env = os.environ.get(env_name(key))
        if env is not None:
            values[key] = _coerce(key, kind, env)
    for key, raw in overrides.items():
        if raw is not None:
            values[key] = _coerce(key, kinds[key], raw)
    settings = Settings(**values)
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    if not 0 <= settings.min_workers <= settings.max_workers:
        raise ValueError("need 0 <= min_workers <= max_workers")
    if not 0 <= settings.warm_pool <= settings.max_workers:
        raise ValueError("need 0 <= warm_pool <= max_workers")
    if settings.target_wait_s < 0 or (settings.cpu_high and not 0 <= settings.cpu_low <= settings.cpu_high <= 1):
        raise ValueError("need target_wait_s >= 0 and, with cpu_high, 0 <= cpu_low <= cpu_high <= 1")
    named = (
        ("auth", AUTH_MODES),
        ("backend", BACKENDS),
        ("course_reply", COURSE_REPLIES),
        ("durability", DURABILITIES),
        ("role", ROLES),
        ("scaler", SCALERS),
    )
    for name, allowed in named:
        if getattr(settings, name) not in allowed:
            raise ValueError(f"{name} must be {_either(allowed)}, not {getattr(settings, name)!r}")
    if settings.log_format not in FORMATS:
        raise ValueError(f"log_format must be {' or '.join(FORMATS)}, not {settings.log_format!r}")
    for path in settings.course_paths:
        _check_course_path(path)
    secret_keys(settings.webhook_secret)
    if settings.webhook_concurrency < 1 or settings.webhook_backoff_s <= 0:
        raise ValueError("need webhook_concurrency >= 1 and webhook_backoff_s > 0")
    if settings.threads < 1 or settings.idle_threads < 0:
        raise ValueError("need threads >= 1 and idle_threads >= 0 (0: every core the worker may use)")
    if not 1 <= settings.batch_size <= MOST_PER_RECEIVE:  # else its every receive is refused
        raise ValueError(f"need 1 <= batch_size <= {MOST_PER_RECEIVE} (the most messages one receive takes)")


# The most messages a queue call carries: SQS's limit, which every backend keeps
# (queues/base.py's MAX_BATCH, a layer above this one; a test holds them equal).
MOST_PER_RECEIVE = 10


def _either(options: tuple[str, ...]) -> str:
    return " or ".join([", ".join(options[:-1]), options[-1]] if len(options) > 2 else options)


AUTH_MODES = ("auto", "required", "off")
SCALERS = ("controller", "external")
BACKENDS = ("embedded", "aws")
DURABILITIES = ("process", "power")
COURSE_REPLIES = ("name:label", "label")
# The service's own routes: a course path may not shadow them.
_RESERVED = ("/v1/", "/static/", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/redoc")


def _check_course_path(path: str) -> None:
    ok = path.startswith("/") and all(c.isalnum() or c in "/-_." for c in path) and "//" not in path
    if not ok or ".." in path:
        raise ValueError(f"course_paths: {path!r} is not a plain URL path such as /upload")
    if any(path == r.rstrip("/") or path.startswith(r) for r in _RESERVED):
        raise ValueError(f"course_paths: {path!r} is one of the service's own routes")


def help_of(name: str) -> str:
    """A setting's help, for a command that takes it otherwise than as a setting."""
    return str(next(f.metadata["help"] for f in fields(Settings) if f.name == name))


def env_name(name: str) -> str:
    return f"IRAAS_{name.upper()}"


def declared(command: str) -> Iterator[Field[Any]]:
    """The settings `command` (up, web, worker, controller, keys) takes, in declaration order."""
    wanted = set(PROCESSES[command])
    return (f for f in fields(Settings) if f.metadata["takes"] & wanted)


def process_env(settings: Settings, process: str, inherited: Mapping[str, str]) -> dict[str, str]:
    """The whole environment of a `process` started with these settings: `inherited` without
    any IRAAS_<setting>, then the settings that process takes. So a worker never gets the
    webhook secret, nor where to read it, whichever way it came (a flag, a variable, a file)."""
    ours = {env_name(f.name) for f in fields(Settings)}
    out = {k: v for k, v in inherited.items() if k not in ours}
    for f in declared(process):
        value = getattr(settings, f.name)
        out[env_name(f.name)] = ",".join(value) if isinstance(value, tuple) else str(value)
    return out


def log_format_from_env() -> str:
    """The log format before the settings are read (a process logs from its first line)."""
    return os.environ.get(env_name("log_format")) or "text"


def cache_dir() -> Path | None:
    """Where downloaded or converted weights are kept (IRAAS_CACHE_DIR), if set: not a
    service setting, so that `iraas classify` and the tests can point it elsewhere."""
    raw = os.environ.get("IRAAS_CACHE_DIR")
    return Path(raw) if raw else None
