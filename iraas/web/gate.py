"""What every request passes before any route: the Host it names, the Origin it comes from,
and the headers every answer carries.

A service on 127.0.0.1 is reachable from any web page the user opens: by a cross-site form
POST (CSRF), or by DNS rebinding (a name the attacker controls, re-pointed at 127.0.0.1, makes
the browser treat the service as the attacker's own origin). Serving only the configured
`Host` names stops the second; refusing state-changing requests from a foreign `Origin` stops
the first. Plain ASGI, like the request-id middleware, for speed.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from .asgi import HttpMiddleware, Send, on_start

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)
HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
# FastAPI's own documentation pages load their script from a CDN and inline: no CSP there.
_NO_CSP = ("/docs", "/redoc")


@functools.lru_cache(maxsize=1024)  # asked of the same few hosts on every request
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(listen: str, configured: Iterable[str]) -> frozenset[str] | None:
    """The `Host` names served; None: any. Default: the loopback names when listening on a
    loopback address, any name otherwise (keys are required there)."""
    names = {h.lower().strip("[]") for h in configured}
    if "*" in names:
        return None
    if not names and not is_loopback(listen):
        return None
    return frozenset(names | ({*LOOPBACK_NAMES, listen.lower()} if is_loopback(listen) else set()))


def host_name(value: str) -> str:
    """The name in a `Host` value, without the port: `[::1]:8000` → `::1`."""
    return _host_port(value)[0]


def _host_port(value: str) -> tuple[str, int | None]:
    parts = urlsplit("//" + value.strip().lower())
    try:
        return parts.hostname or "", parts.port
    except ValueError:
        return "", None


def foreign_origin(method: str, host: str, origin: str | None, fetch_site: str | None, allowed: frozenset[str]) -> bool:
    """Whether a request changes state from another site: its `Origin` is neither this
    service's (same host and port) nor an allowed one; browsers that send no Origin still send
    `Sec-Fetch-Site`. Clients that are not browsers send neither and pass."""
    if method in SAFE_METHODS:
        return False
    if origin is None:
        return fetch_site in ("cross-site", "same-site")
    if origin in allowed:
        return False
    parts = urlsplit(origin)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return True
    name, host_port = _host_port(host)
    if not parts.hostname or parts.hostname != name:
        return True  # "null" (a sandboxed frame, a file) included
    return port != host_port if host_port is not None else port not in (80, 443)


def _refusal(status: int, code: str, detail: str, rid: str) -> tuple[dict[str, Any], bytes]:
    body = json.dumps({"error": code, "detail": detail, "request_id": rid}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *HEADERS],
    }
    return start, body


class Gate(HttpMiddleware):
    def __init__(self, app: Any, hosts: frozenset[str] | None, origins: frozenset[str]) -> None:
        super().__init__(app)
        self.hosts, self.origins = hosts, origins

    async def handle(self, scope: Any, receive: Any, send: Send, headers: dict[bytes, bytes]) -> None:
        host = headers.get(b"host", b"").decode("latin-1")
        refused = self._check(scope["method"], host, headers)
        if refused:
            start, body = _refusal(*refused, scope.get("state", {}).get("request_id", ""))
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        csp = not scope["path"].startswith(_NO_CSP)

        def add_headers(message: Any) -> None:
            extra = [*HEADERS, (b"content-security-policy", CSP.encode())] if csp else [*HEADERS]
            limits = scope.get("state", {}).get("ratelimit", {})
            extra += [(k.lower().encode(), v.encode()) for k, v in limits.items()]
            message["headers"] = [*message.get("headers", []), *extra]

        await self.app(scope, receive, on_start(send, add_headers))

    def _check(self, method: str, host: str, headers: dict[bytes, bytes]) -> tuple[int, str, str] | None:
        if not host:
            return 400, "bad_host", "a Host header is required"
        if self.hosts is not None and host_name(host) not in self.hosts:
            detail = f"this service does not answer for {host[:100]!r} (setting allowed_hosts)"
            return 421, "misdirected", detail
        origin = headers.get(b"origin")
        site = headers.get(b"sec-fetch-site")
        if foreign_origin(
            method,
            host,
            origin.decode("latin-1") if origin is not None else None,
            site.decode("latin-1") if site is not None else None,
            self.origins,
        ):
            return 403, "foreign_origin", "a request from another site's page may not change anything here"
        return None
