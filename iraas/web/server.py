"""uvicorn, with the limits it lacks: a deadline for a request's headers and a cap on their size.

uvicorn closes idle keep-alive connections and caps connections (`limit_concurrency`), but a
client that sends half its headers and then nothing holds its connection forever (slowloris).
Here every request's headers must be complete within `header_timeout_s` and fit in 64 KiB;
a refusal past the connection cap is JSON like every other error.

A refused connection is closed the way nginx and Apache close one (a lingering close): the
answer, then our half of the connection, then whatever the client still sends is read and
dropped until it closes its half or `linger_s` passes. Closing at once, with the client's body
still arriving, makes the kernel answer with a reset, which can destroy the refusal before
the client reads it: measured on loopback, 11 of 60 clients sending a 4 MB upload past the
connection cap read a reset instead of the 503.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..config import Settings

MAX_HEADER_BYTES = 64 * 1024


def _json_response(status: int, reason: str, code: str, detail: str, extra: str = "") -> bytes:
    body = json.dumps({"error": code, "detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n{extra}\r\n"
    )
    return head.encode() + body


class _Protocol(HttpToolsProtocol):
    header_timeout_s = 10.0
    linger_s = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._refused = False

    def _refuse(self, answer: bytes) -> None:
        """Send `answer` and close without a reset (the module's docstring says why); once."""
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        self._disarm()
        self.transport.write(answer)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.loop.call_later(self.linger_s, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if not self._refused:  # refused: what still arrives is read and dropped
            super().data_received(data)

    def eof_received(self) -> None:
        if self._refused:  # the client has read its answer and closed its half
            self.transport.close()
            return
        super().eof_received()

    # The rest of the chunk that held a refused request's headers is still parsed: its body
    # and its end have no request to go to (uvicorn would log each as an invalid request).
    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def _arm(self) -> None:
        self._disarm()
        self._header_bytes = 0
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        detail = f"the request headers did not arrive within {self.header_timeout_s:g} s"
        self._refuse(_json_response(408, "Request Timeout", "header_timeout", detail))

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        super().on_header(name, value)

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            detail = f"the request line and headers are over {MAX_HEADER_BYTES} bytes"
            self._refuse(_json_response(431, "Request Header Fields Too Large", "headers_too_large", detail))

    def on_headers_complete(self) -> None:
        self._disarm()
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            # uvicorn's own answer here is text/plain; every error of this service is JSON
            detail = "too many connections: try again shortly"
            self._refuse(_json_response(503, "Service Unavailable", "overloaded", detail, "retry-after: 1\r\n"))
            return
        super().on_headers_complete()


def listen(app: Any, settings: Settings) -> None:
    limits = {"header_timeout_s": settings.header_timeout_s, "linger_s": settings.linger_s}
    protocol = type("IraasProtocol", (_Protocol,), limits)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        http=protocol,
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=5,
    )
