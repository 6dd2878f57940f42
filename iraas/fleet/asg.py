"""A worker in an EC2 Auto Scaling group keeps the group from ending it while it works.

The group scales in by its own choice of instance; an instance protected from scale-in is never
chosen. A worker protects its instance before its first batch after being idle and releases it
once idle for `release_after_s`: back-to-back batches cost no call, a burst two.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..awsapi import failed
from ..logs import Once

log = logging.getLogger(__name__)


class ScaleInProtection:
    def __init__(
        self,
        client: Any,
        group: str,
        instance: str,
        release_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.group, self.instance = client, group, instance
        self.release_after_s, self.clock = release_after_s, clock
        self.protected = False
        self._last_work = -float("inf")
        self._lock = threading.Lock()
        self._fault = Once(log)

    def working(self) -> None:
        """Before a batch: protected (one call, when it was not)."""
        with self._lock:
            self._last_work = self.clock()
            if not self.protected:
                self.protected = self._set(True)

    def idle(self) -> None:
        """On each heartbeat while idle: released once idle long enough."""
        with self._lock:
            if self.protected and self.clock() - self._last_work >= self.release_after_s:
                self.protected = not self._set(False)

    def _set(self, on: bool) -> bool:
        try:
            self.client.set_instance_protection(
                AutoScalingGroupName=self.group, InstanceIds=[self.instance], ProtectedFromScaleIn=on
            )
        except (ClientError, BotoCoreError) as exc:
            # Work goes on unprotected: a scale-in in the middle of a batch loses nothing (its
            # messages come back after the visibility timeout), it only redoes the batch.
            self._fault.say(
                failed("autoscaling:SetInstanceProtection", exc, f"on {self.group}") + "; working unprotected"
            )
            return False
        self._fault.over(f"scale-in protection of {self.instance} works again")
        log.info("instance %s %s scale-in", self.instance, "protected from" if on else "released for")
        return True
