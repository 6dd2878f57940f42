"""Workers as EC2 instances, launched from the deployment's launch template.

The template carries the AMI, instance type, security group, instance profile, user-data,
IMDSv2 and shutdown behaviour "terminate" (a worker that exits on idle ends its instance).
Instances are tagged with the deployment and role, and listed by those tags; pending and
running count as capacity. Capacity and throttling errors never escape: the fleet backs off,
launches fewer (or none) this time, and reports the error for `/v1/cluster`.

A warm pool (`warm_pool` N > 0) keeps up to N scaled-in workers *stopped* rather than
terminated: already provisioned (the wheel installed, the model on disk), one starts in seconds
where a new instance takes a minute, and costs only its disk while stopped. Scale-out starts
pooled instances first and launches new ones for the rest; a worker killed as hung is
terminated, never pooled. The pool fills from the first scale-in after a deployment.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from botocore.exceptions import ClientError

from ..awsapi import error_code
from .base import Instance

log = logging.getLogger(__name__)

DEPLOYMENT_TAG = "iraas:deployment"
ROLE_TAG = "iraas:role"
_RETRYABLE = {
    "InsufficientInstanceCapacity",
    "RequestLimitExceeded",
    "InstanceLimitExceeded",
    "Unsupported",
    "VcpuLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "ServiceUnavailable",
    "InternalError",
}
_STATES = {"pending": "pending", "running": "running", "shutting-down": "stopping", "stopping": "stopping"}
_POOLED = ("stopping", "stopped")  # only a StopInstances (the pool's) makes an instance stop


class Ec2Fleet:
    def __init__(
        self,
        client: Any,
        deployment: str,
        launch_template: str,
        *,
        clock: Callable[[], float] = time.time,
        max_backoff_s: float = 60.0,
        warm_pool: int = 0,
    ) -> None:
        self.ec2 = client
        self.deployment = deployment
        self.launch_template = launch_template
        self.clock = clock
        self.max_backoff_s = max_backoff_s
        self.errors: list[dict[str, Any]] = []  # recent capacity / throttling errors, newest last
        self._backoff_s = 0.0
        self._retry_at = 0.0
        self.warm_pool = warm_pool
        self._stopped: list[str] = []  # pooled and ready to start, as of the last list()
        self._pooled = 0  # stopped + stopping into the pool, as of the last list()

    def launch(self, n: int) -> list[str]:
        started = self._start_pooled(n)
        return started + self._run(n - len(started))

    def _start_pooled(self, n: int) -> list[str]:
        ids, self._stopped = self._stopped[:n], self._stopped[n:]
        if not ids:
            return []
        try:
            self.ec2.start_instances(InstanceIds=ids)
        except ClientError as exc:  # capacity, or an instance no longer startable: launch new ones
            log.warning("StartInstances %s: %s; launching new instances instead", ids, exc)
            return []
        self._pooled -= len(ids)
        log.info("started %d pooled worker(s): %s", len(ids), ", ".join(ids))
        return ids

    def _run(self, n: int) -> list[str]:
        now = self.clock()
        if n <= 0 or now < self._retry_at:
            return []
        tags = [
            {"Key": DEPLOYMENT_TAG, "Value": self.deployment},
            {"Key": ROLE_TAG, "Value": "worker"},
            {"Key": "Name", "Value": f"{self.deployment}-worker"},
        ]
        try:
            resp = self.ec2.run_instances(
                LaunchTemplate={"LaunchTemplateName": self.launch_template, "Version": "$Latest"},
                MinCount=1,  # partial capacity is better than none
                MaxCount=n,
                TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
            )
        except ClientError as exc:
            self._failed(exc, now)
            return []
        self._backoff_s = 0.0
        return [i["InstanceId"] for i in resp.get("Instances", [])]

    def _failed(self, exc: ClientError, now: float) -> None:
        code = error_code(exc)
        if code not in _RETRYABLE:
            log.error("RunInstances failed: %s", exc)
        self._backoff_s = min(max(self._backoff_s * 2, 1.0), self.max_backoff_s)
        self._retry_at = now + self._backoff_s
        self.errors = [
            *self.errors[-9:],
            {"at": now, "code": code or "error", "retry_in_s": self._backoff_s, "message": str(exc)[:300]},
        ]
        log.warning("RunInstances: %s; next try in %.0f s", code, self._backoff_s)

    def stop(self, ids: Sequence[str]) -> None:
        room = max(self.warm_pool - self._pooled, 0)
        keep, end = list(ids[:room]), list(ids[room:])
        if keep:
            try:
                self.ec2.stop_instances(InstanceIds=keep)
                self._pooled += len(keep)
            except ClientError as exc:
                log.warning("StopInstances %s: %s; terminating them instead", keep, exc)
                end += keep
        self._terminate(end)

    def kill(self, ids: Sequence[str]) -> None:
        self._terminate(ids)

    def _terminate(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        try:
            self.ec2.terminate_instances(InstanceIds=list(ids))
        except ClientError as exc:  # gone already, or throttled: the next tick tries again
            log.warning("TerminateInstances %s: %s", list(ids), exc)

    def warm(self) -> dict[str, Any] | None:
        if not self.warm_pool:
            return None
        return {"kind": "pool", "size": self.warm_pool, "stopped": len(self._stopped), "pooled": self._pooled}

    def shutdown(self) -> None:
        """Nothing: instances outlive the controller and end themselves when idle
        (`worker_max_idle_s` in their user-data, shutdown behaviour "terminate")."""

    def list(self) -> list[Instance]:
        """Capacity and instances stopping; as a side effect, the pool as it stands."""
        states = [*_STATES, "stopped"] if self.warm_pool else list(_STATES)
        filters = [
            {"Name": f"tag:{DEPLOYMENT_TAG}", "Values": [self.deployment]},
            {"Name": f"tag:{ROLE_TAG}", "Values": ["worker"]},
            {"Name": "instance-state-name", "Values": states},
        ]
        out, stopped, pooled = [], [], 0
        try:
            for page in self.ec2.get_paginator("describe_instances").paginate(Filters=filters):
                for res in page["Reservations"]:
                    for i in res["Instances"]:
                        name = i["State"]["Name"]
                        pooled += name in _POOLED
                        if name == "stopped":
                            stopped.append(i["InstanceId"])
                        elif state := _STATES.get(name):
                            out.append(Instance(i["InstanceId"], state, i["LaunchTime"].timestamp()))
        except ClientError as exc:
            # Throttled: report nothing new rather than crash; an empty list would make the
            # controller launch a whole new fleet, so re-raise only after logging.
            log.warning("DescribeInstances: %s", exc)
            raise
        self._stopped, self._pooled = sorted(stopped), pooled
        return out
