"""The controller's figures as CloudWatch metrics, on AWS: namespace `iraas`, dimension
`Deployment`, for alarms, the stack's dashboard and an Auto Scaling group's target tracking.

Each tick's figures are gathered into statistic sets (count, sum, minimum, maximum) and put
once every `every_s` in one PutMetricData call: a peak between two puts still shows in the
maximum, and the cost is one request a period whatever the tick. Counters (dead letters,
webhooks given up) are cumulative in the process; each put sends what they grew by.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from .awsapi import failed
from .logs import Once

log = logging.getLogger(__name__)
NAMESPACE = "iraas"
# name: unit. Gauges, sampled each tick:
GAUGES = {
    "Backlog": "Count",  # waiting + in flight
    "Waiting": "Count",
    "InFlight": "Count",
    "OldestAgeSeconds": "Seconds",  # not on SQS, whose own ApproximateAgeOfOldestMessage says it
    "Workers": "Count",
    "BusyWorkers": "Count",
    "WorkerCPU": "Percent",  # the workers' average
    "WorkerRate": "Count/Second",  # images a second one busy worker handles
    "DrainSeconds": "Seconds",  # the backlog at the workers' rate, with the workers there are
    "BacklogPerWorker": "Count",  # what an Auto Scaling group tracks (workers 0 counts as 1)
}
# ... and counters, summed over each period:
COUNTERS = {"DeadLetters": "Count", "WebhooksFailed": "Count"}
MAX_DATA = 1000  # PutMetricData's limit of metric data a call


class MetricsSink(Protocol):
    def observe(self, gauges: dict[str, float | None], counters: dict[str, int]) -> None: ...


class CloudWatchMetrics:
    def __init__(
        self, client: Any, deployment: str, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.client, self.deployment, self.every_s, self.clock = client, deployment, every_s, clock
        self._stats: dict[str, list[float]] = {}  # name: [count, sum, min, max]
        self._sent: dict[str, int] = {}  # counters as last put
        self._last = clock()
        self._lock = threading.Lock()
        self._fault = Once(log)

    def observe(self, gauges: dict[str, float | None], counters: dict[str, int]) -> None:
        """This tick's figures (None: not known, left out); a put when the period is over."""
        with self._lock:
            for name, value in gauges.items():
                if value is None:
                    continue
                s = self._stats.setdefault(name, [0, 0.0, value, value])
                s[0], s[1], s[2], s[3] = s[0] + 1, s[1] + value, min(s[2], value), max(s[3], value)
            if self.clock() - self._last < self.every_s:
                return
            self._last, stats, self._stats = self.clock(), self._stats, {}
        self._put(stats, counters)

    def _put(self, stats: dict[str, list[float]], counters: dict[str, int]) -> None:
        now = datetime.now(UTC)
        dims = [{"Name": "Deployment", "Value": self.deployment}]
        data: list[dict[str, Any]] = [
            {
                "MetricName": name,
                "Dimensions": dims,
                "Timestamp": now,
                "StatisticValues": {"SampleCount": s[0], "Sum": s[1], "Minimum": s[2], "Maximum": s[3]},
                "Unit": GAUGES.get(name, "None"),
            }
            for name, s in stats.items()
        ]
        grown = {name: total - self._sent.get(name, 0) for name, total in counters.items()}
        data += [
            {"MetricName": n, "Dimensions": dims, "Timestamp": now, "Value": float(v), "Unit": COUNTERS.get(n, "Count")}
            for n, v in grown.items()
        ]
        try:
            for i in range(0, len(data), MAX_DATA):
                self.client.put_metric_data(Namespace=NAMESPACE, MetricData=data[i : i + MAX_DATA])
        except (ClientError, BotoCoreError) as exc:  # the counters' growth is put with the next period's
            self._fault.say(
                failed("cloudwatch:PutMetricData", exc, f"for the namespace {NAMESPACE!r}")
                + "; tried again next period"
            )
            return
        self._sent.update(counters)
        self._fault.over("CloudWatch metrics are put again")


def latest(client: Any, deployment: str, minutes: int = 15) -> dict[str, float | None]:
    """Each metric's last period within `minutes`, as `iraas aws status` shows it: gauges their
    maximum, counters their sum (None: nothing put in that time)."""
    end = datetime.now(UTC)
    dims = [{"Name": "Deployment", "Value": deployment}]
    names = [*GAUGES, *COUNTERS]
    queries = [
        {
            "Id": f"m{i}",
            "MetricStat": {
                "Metric": {"Namespace": NAMESPACE, "MetricName": name, "Dimensions": dims},
                "Period": 60,
                "Stat": "Sum" if name in COUNTERS else "Maximum",
            },
        }
        for i, name in enumerate(names)
    ]
    got = client.get_metric_data(
        MetricDataQueries=queries, StartTime=end - timedelta(minutes=minutes), EndTime=end + timedelta(minutes=1)
    )
    out: dict[str, float | None] = dict.fromkeys(names)
    for result in got["MetricDataResults"]:
        if result["Values"]:
            newest = max(range(len(result["Values"])), key=lambda i: result["Timestamps"][i])
            out[names[int(result["Id"][1:])]] = float(result["Values"][newest])
    return out
