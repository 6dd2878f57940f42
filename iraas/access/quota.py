"""What a caller may spend: token buckets for requests and images, and a daily image quota.

The buckets live in each web process (a deployment of N web processes lets a key spend up to
N times the rate). The daily count is shared through the blob store: each process writes its
own counts for the day (`usage/<day>/<process>.json`) about once a second and adds up the
others', so the quota holds across processes to within about a second of traffic.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from ..blobs.base import BlobError, BlobStore

USAGE = "usage/"
USAGE_RETENTION_S = 2 * 86_400  # a day's counts, kept past the day (S3: a lifecycle rule)


@dataclass
class Bucket:
    """A token bucket: holds up to `capacity`, refills `rate` a second."""

    rate: float
    capacity: float
    tokens: float = math.nan
    at: float = 0.0

    def level(self, now: float) -> float:
        if math.isnan(self.tokens):
            return self.capacity
        return min(self.capacity, self.tokens + (now - self.at) * self.rate)

    def take(self, n: float, now: float) -> float:
        """Take `n` tokens: 0.0 if taken, else the seconds until they would be there (nothing
        taken). More than the capacity can never be taken: the wait is then infinite."""
        have = self.level(now)
        if n > self.capacity:
            return math.inf
        if have < n:
            return (n - have) / self.rate
        self.tokens, self.at = have - n, now
        return 0.0

    def full_in(self, now: float) -> float:
        return (self.capacity - self.level(now)) / self.rate


@dataclass(frozen=True)
class KeyLimits:
    requests_per_s: float
    images_per_s: float
    images_per_day: int
    burst_s: float  # a bucket holds this many seconds of its rate

    @property
    def request_burst(self) -> int:
        return max(1, round(self.requests_per_s * self.burst_s))

    @property
    def image_burst(self) -> int:
        return max(1, round(self.images_per_s * self.burst_s))


@dataclass(frozen=True)
class Verdict:
    """Whether a spend is allowed; `retry_after` seconds if not; the header values either way."""

    allowed: bool
    retry_after: int
    headers: dict[str, str] = field(default_factory=dict)
    reason: str = ""


def day(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


class Quotas:
    """Per caller: request bucket, image bucket, and the day's image count."""

    def __init__(
        self,
        blobs: BlobStore,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sync_s: float = 1.0,
    ) -> None:
        """`clock`: the day (UTC); `monotonic`: the buckets' time (a wall clock may jump)."""
        self.blobs, self.clock, self.monotonic, self.sync_s = blobs, clock, monotonic, sync_s
        self.process = uuid.uuid4().hex[:12]
        self._buckets: dict[tuple[str, str], Bucket] = {}
        self._mine: dict[str, int] = {}  # today's images by caller, this process
        self._others: dict[str, int] = {}  # today's images by caller, the other processes
        self._day = day(clock())
        self._synced = -math.inf
        self._lock = threading.Lock()

    def _bucket(self, who: str, kind: str, rate: float, capacity: float) -> Bucket:
        b = self._buckets.get((who, kind))
        if b is None or b.rate != rate or b.capacity != capacity:
            b = self._buckets[(who, kind)] = Bucket(rate=rate, capacity=capacity)
        return b

    def request(self, who: str, limits: KeyLimits) -> Verdict:
        """One request by `who`, before its body is read."""
        now = self.monotonic()
        with self._lock:
            b = self._bucket(who, "requests", limits.requests_per_s, limits.request_burst)
            wait = b.take(1, now)
            headers = _headers("requests", limits.request_burst, b, limits.burst_s, now)
        if wait:
            return Verdict(
                False, _ceil(wait), headers, f"more than {limits.request_burst} requests in {limits.burst_s:g} s"
            )
        return Verdict(True, 0, headers)

    def images(self, who: str, limits: KeyLimits, n: int) -> Verdict:
        """`n` images by `who`, once the request is read: the image bucket and the day's quota."""
        now, wall = self.monotonic(), self.clock()
        with self._lock:
            self._roll(wall)
            left = limits.images_per_day - self._mine.get(who, 0) - self._others.get(who, 0)
            b = self._bucket(who, "images", limits.images_per_s, limits.image_burst)
            wait = math.inf if n > left else b.take(n, now)
            if not wait:
                self._mine[who] = self._mine.get(who, 0) + n
                left -= n
            headers = _headers("images", limits.image_burst, b, limits.burst_s, now)
        midnight = _ceil(86_400 - wall % 86_400)
        headers["RateLimit-Policy"] += f', "daily";q={limits.images_per_day};w=86400;qu="images"'
        headers["RateLimit"] += f', "daily";r={max(0, left)};t={midnight}'
        if not wait:
            return Verdict(True, 0, headers)
        if n > left:
            return Verdict(False, midnight, headers, f"the daily quota of {limits.images_per_day} images is spent")
        if n > limits.image_burst:
            reason = f"{n} images at once is more than the {limits.image_burst} this key may send in a burst"
            return Verdict(False, 60, headers, reason)
        return Verdict(False, _ceil(wait), headers, f"more than {limits.image_burst} images in {limits.burst_s:g} s")

    def _roll(self, wall: float) -> None:
        today = day(wall)
        if today != self._day:
            self._day, self._mine, self._others = today, {}, {}

    def claim_sync(self) -> bool:
        """True (once a `sync_s`) when it is time to `sync`: the caller then runs it."""
        with self._lock:
            if self.monotonic() - self._synced < self.sync_s:
                return False
            self._synced = self.monotonic()
            return True

    def sync(self) -> None:
        """Publish this process's counts for the day; read the other processes' (blocking I/O)."""
        with self._lock:
            today, mine = self._day, dict(self._mine)
        folder = f"{USAGE}{today}/"
        try:
            if mine:
                self.blobs.put(f"{folder}{self.process}.json", json.dumps(mine).encode(), durable=False)
            others: dict[str, int] = {}
            for blob in self.blobs.list(folder):
                if blob.endswith(f"/{self.process}.json"):
                    continue
                for who, n in json.loads(self.blobs.get(blob)).items():
                    others[who] = others.get(who, 0) + int(n)
        except (BlobError, ValueError):
            return  # the next sync tries again; meanwhile the last known counts stand
        with self._lock:
            if self._day == today:
                self._others = others


def _ceil(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def _headers(name: str, burst: int, b: Bucket, window: float, now: float) -> dict[str, str]:
    """IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers-10): the policy, and what is
    left of it with the seconds until the bucket is full again. The policy is named for its
    unit: "requests" or "images"."""
    return {
        "RateLimit-Policy": f'"{name}";q={burst};w={window:g};qu="{name}"',
        "RateLimit": f'"{name}";r={math.floor(b.level(now))};t={math.ceil(b.full_in(now))}',
    }


def expire_usage(blobs: BlobStore, now: float) -> int:
    """Retention of the daily counts (embedded store; S3: a lifecycle rule)."""
    return blobs.expire(USAGE, now - USAGE_RETENTION_S)
