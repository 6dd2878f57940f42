"""What the web tier's plain-ASGI middlewares share (Starlette's BaseHTTPMiddleware costs ~1 ms
a request): HTTP requests only, their headers read once, and the response's start edited."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Send = Callable[[Any], Awaitable[None]]


class HttpMiddleware:
    """Passes other ASGI traffic (lifespan) through; `handle` sees each HTTP request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send, dict(scope["headers"]))

    async def handle(self, scope: Any, receive: Any, send: Send, headers: dict[bytes, bytes]) -> None:
        raise NotImplementedError


def on_start(send: Send, edit: Callable[[Any], None]) -> Send:
    """`send`, with `edit(message)` called on the response's start (its status and headers)."""

    async def sending(message: Any) -> None:
        if message["type"] == "http.response.start":
            edit(message)
        await send(message)

    return sending
