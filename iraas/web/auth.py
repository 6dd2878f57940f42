"""Who is calling, and may they: API keys, scopes and quotas, as FastAPI dependencies.

Keys are required when `auth` is "required", or (the default, "auto") once any key exists or
when the service listens beyond loopback; with `auth` "off" (`--no-auth`) and on loopback
before any key exists, every caller is the anonymous admin, without quotas (as before keys).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ..access.keys import Key, KeyRing
from ..access.quota import KeyLimits, Quotas, Verdict
from ..config import Settings
from ..refusals import InputError
from .gate import is_loopback
from .intake import Item

log = logging.getLogger(__name__)

OPEN_OWNER = ""  # results of requests made while keys were not required
COURSE_OWNER = "~course"  # anonymous course requests (no key name starts with ~)


@dataclass(frozen=True)
class Caller:
    name: str
    scope: str  # "admin" | "recognize" | "course" (anonymous, POST / only)
    owner: str  # signs the ids of this caller's requests: only it (or an admin) reads them
    limits: KeyLimits | None  # None: no quotas


ANONYMOUS_ADMIN = Caller(name="anonymous", scope="admin", owner=OPEN_OWNER, limits=None)


def keys_required(mode: str, listen: str, any_keys: bool) -> bool:
    if mode == "off":
        return False
    return mode == "required" or any_keys or not is_loopback(listen)


def presented(request: Request) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>`, or `X-API-Key: <key>`."""
    auth = request.headers.get("authorization")
    if auth is not None:
        kind, _, value = auth.partition(" ")
        return value.strip() if kind.lower() == "bearer" else ""
    return request.headers.get("x-api-key")


def _unauthorized(detail: str, *, invalid: bool) -> InputError:
    """401; `invalid`: a key was sent but is wrong or revoked (RFC 6750's invalid_token)."""
    challenge = 'Bearer realm="iraas", error="invalid_token"' if invalid else 'Bearer realm="iraas"'
    return InputError(401, "unauthorized", detail, headers={"WWW-Authenticate": challenge})


class Access:
    def __init__(self, settings: Settings, ring: KeyRing, quotas: Quotas) -> None:
        self.settings, self.ring, self.quotas = settings, ring, quotas
        self._syncs: set[asyncio.Task[None]] = set()
        if settings.auth == "off":
            log.warning(
                "AUTHENTICATION IS OFF (--no-auth): anyone who can reach port %d may use everything", settings.port
            )

    def limits(self, key: Key | None) -> KeyLimits:
        """The deployment's defaults, with the key's own limits where it has them."""
        s = self.settings
        own = key or Key(name="", scope="", created_at=0)
        return KeyLimits(
            requests_per_s=own.requests_per_s or s.requests_per_s,
            images_per_s=own.images_per_s or s.images_per_s,
            images_per_day=own.images_per_day or s.images_per_day,
            burst_s=s.burst_s,
        )

    async def _required(self) -> bool:
        s = self.settings
        any_keys = True
        if s.auth == "auto" and is_loopback(s.host):  # key-free until a first key exists (2 s)
            names = self.ring.cached_names()
            any_keys = bool(names if names is not None else await run_in_threadpool(self.ring.names))
        return keys_required(s.auth, s.host, any_keys)

    async def identify(self, request: Request, *, course: bool = False) -> Caller | None:
        """The caller; None when keys are required and none was sent. A key sent but wrong or
        revoked is refused (401) wherever it is sent."""
        token = presented(request)
        if not await self._required() and (token is None or self.settings.auth == "off"):
            return ANONYMOUS_ADMIN  # key-free; still, a key sent is checked (unless auth is off)
        if token is None:
            if course and self.settings.anonymous_course:
                return Caller(name="anonymous", scope="course", owner=COURSE_OWNER, limits=self.limits(None))
            return None
        known, key = self.ring.cached(token)
        if not known:
            key = await run_in_threadpool(self.ring.find, token)
        if key is None:
            raise _unauthorized("the key is not valid", invalid=True)
        if not key.active:
            raise _unauthorized("the key was revoked", invalid=True)
        return Caller(name=key.name, scope=key.scope, owner=key.name, limits=self.limits(key))

    def _spend(self, request: Request, verdict: Verdict) -> None:
        state = request.scope.setdefault("state", {})
        had = state.get("ratelimit", {})  # the request's policy, then its images' policies
        state["ratelimit"] = {k: f"{had[k]}, {v}" if k in had else v for k, v in verdict.headers.items()}
        if not verdict.allowed:
            # the RateLimit fields go on every answer, this one too: the gate adds them
            raise InputError(429, "rate_limited", verdict.reason, retry_after=verdict.retry_after)

    async def _need(self, request: Request, scope: str, *, course: bool = False) -> Caller:
        caller = await self.identify(request, course=course)
        if caller is None:
            raise _unauthorized("an API key is required: send Authorization: Bearer <key>", invalid=False)
        if scope == "admin" and caller.scope != "admin":
            raise InputError(403, "forbidden", f"the key {caller.name!r} may not do this: it needs the admin scope")
        if caller.limits is not None:
            self._spend(request, self.quotas.request(caller.owner, caller.limits))
        return caller

    # FastAPI dependencies, one per kind of route
    async def recognize(self, request: Request) -> Caller:
        return await self._need(request, "recognize")

    async def course(self, request: Request) -> Caller:
        return await self._need(request, "recognize", course=True)

    async def admin(self, request: Request) -> Caller:
        return await self._need(request, "admin")

    async def metrics(self, request: Request) -> Caller | None:
        """Open to a scraper on this machine; otherwise admin."""
        client = request.client.host if request.client else ""
        if is_loopback(client):
            return None
        return await self._need(request, "admin")

    async def charge(self, request: Request, caller: Caller, items: list[Item]) -> list[Item]:
        """Spend one image of `caller`'s quota per item (the request read), or 429 with the
        items' spools closed."""
        if caller.limits is None:
            return items
        if self.quotas.claim_sync():  # in the background: the count is a second behind at most
            task = asyncio.get_running_loop().create_task(run_in_threadpool(self.quotas.sync))
            self._syncs.add(task)
            task.add_done_callback(self._syncs.discard)
        try:
            self._spend(request, self.quotas.images(caller.owner, caller.limits, len(items)))
        except InputError:
            for item in items:
                item.body.close()
            raise
        return items

    def owners(self, caller: Caller) -> list[str]:
        """Whose requests `caller` may read: its own; an admin, everyone's."""
        if caller.scope != "admin":
            return [caller.owner]
        return [OPEN_OWNER, COURSE_OWNER, *self.ring.names()]

    def whoami(self, caller: Caller) -> dict[str, Any]:
        out: dict[str, Any] = {"name": caller.name, "scope": caller.scope}
        if caller is ANONYMOUS_ADMIN:
            out["auth"] = "off"
        return out
