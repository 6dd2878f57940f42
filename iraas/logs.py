"""Logging for the entry points: text or JSON lines, each line about a request carrying its id.

A line is about a request when the code logging it says so (`extra=about(req)`: workers, the
controller, webhook deliveries) or when it runs inside the web request that sent it (the
`current` context variable, set by the web tier's middleware for the request's life).
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from typing import Any, Protocol

FORMATS = ("text", "json")
current: ContextVar[tuple[str, str]] = ContextVar("iraas_request", default=("", ""))  # (request id, traceparent)


class _Traced(Protocol):
    @property
    def trace(self) -> str: ...

    @property
    def traceparent(self) -> str: ...


def about(item: _Traced) -> dict[str, Any]:
    """`extra` for a log line about one request (or its webhook)."""
    return {"request_id": item.trace, "traceparent": item.traceparent}


class _Context(logging.Filter):
    """Fills a record's request id and traceparent from the web request it runs in, unless the
    line named its request itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id, record.traceparent = current.get()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", "")
        return f"{line} [request_id={rid}]" if rid else line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: what log shippers (Loki, CloudWatch, Elastic) index without a
    parser of our own."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        for key in ("request_id", "traceparent"):
            if value := getattr(record, key, ""):
                out[key] = value
        # read per line: a forked worker gets its id after the template configured logging
        if worker := _worker[0]:
            out["worker"] = worker
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


_worker = [""]  # this process's worker id, once it is one


class Once:
    """A fault said when it starts or changes, not each time it repeats (a put each minute, a
    call each batch): the log shows it once, and when it is over."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger, self.said = logger, ""

    def say(self, text: str, level: int = logging.ERROR) -> None:
        if text != self.said:
            self.logger.log(level, "%s", text)
            self.said = text

    def over(self, text: str) -> None:
        """The fault has ended: `text` logged if one had been said."""
        if self.said:
            self.logger.info("%s", text)
            self.said = ""


def name_worker(wid: str) -> None:
    """This process is the worker `wid`: its JSON log lines say so."""
    _worker[0] = wid


def configure(fmt: str = "text", verbose: bool = False) -> None:
    """For entry points only: the root logger at INFO (DEBUG when `verbose`) on stderr."""
    if fmt not in FORMATS:
        raise ValueError(f"log_format must be {' or '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_Context())
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # otherwise a line per request
