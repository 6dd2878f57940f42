"""Who does the once-per-deployment duties now: dead letters to failed results, expiry sweeps,
webhook delivery, the published cluster status.

With one controller (one machine, or the AWS deployment's web instance) it always does them.
With several hosts on PostgreSQL every controller asks for a session advisory lock on a
connection of its own, and only the holder does them; no election of our own. The lock goes
with its session: a holder that dies, or is cut off (keepalives end its session within seconds
on the server's side), frees it, and the next controller to ask takes it over.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from .pg import close_quietly, redacted

log = logging.getLogger(__name__)
_DUTY_LOCK = 0x1AA5_0002  # an advisory lock id of our own (pg.py's migration lock is another)
# A cut-off peer is noticed within ~5 s, on both sides of the connection.
_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 2, "keepalives_interval": 1, "keepalives_count": 3}
_SERVER_SIDE = (
    "SET tcp_keepalives_idle = 2",
    "SET tcp_keepalives_interval = 1",
    "SET tcp_keepalives_count = 3",
    "SET tcp_user_timeout = 5000",
)


class Duty(Protocol):
    def held(self) -> bool:
        """Whether this process does the duties now (cheap: call it every tick)."""
        ...

    def release(self) -> None:
        """Give them up (a process that stops)."""
        ...


class SoleDuty:
    """The only controller of its deployment: it always holds them."""

    def held(self) -> bool:
        return True

    def release(self) -> None:
        return None


class PostgresDuty:
    def __init__(
        self, url: str, *, check_every_s: float = 1.0, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.url, self.check_every_s, self.monotonic = url, check_every_s, monotonic
        self._conn: Any = None
        self._held = False
        self._checked = -math.inf
        self._lock = threading.Lock()

    def held(self) -> bool:
        with self._lock:
            now = self.monotonic()
            if now - self._checked >= self.check_every_s:
                self._checked = now
                self._check()
            return self._held

    def _check(self) -> None:
        import psycopg

        try:
            if self._conn is None:
                from psycopg.conninfo import make_conninfo

                conninfo = make_conninfo(self.url, connect_timeout=3, **_KEEPALIVE)
                self._conn = psycopg.connect(conninfo, autocommit=True)
                for statement in _SERVER_SIDE:
                    self._conn.execute(statement)
            if self._held:
                self._conn.execute("SELECT 1")  # still connected: still the holder
            else:
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (_DUTY_LOCK,)).fetchone()
                self._held = bool(row and row[0])
                if self._held:
                    log.info("this process now does the deployment's duties (lock on %s)", redacted(self.url))
        except psycopg.Error as exc:
            if self._held:
                log.warning("lost the deployment's duties: %s", str(exc).strip().splitlines()[0][:200])
            self._held = False
            self._drop()

    def _drop(self) -> None:
        close_quietly(self._conn)
        self._conn = None

    def release(self) -> None:
        with self._lock:
            self._held = False
            self._drop()
