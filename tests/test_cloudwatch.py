"""The controller's figures as CloudWatch metrics, put to moto's server on 127.0.0.1."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from iraas.awsapi import client
from iraas.cloudwatch import NAMESPACE, CloudWatchMetrics, latest


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _stats(cw: Any, name: str, stat: str) -> float:
    end = datetime.now(UTC) + timedelta(minutes=1)
    got = cw.get_metric_statistics(
        Namespace=NAMESPACE,
        MetricName=name,
        Dimensions=[{"Name": "Deployment", "Value": "d1"}],
        StartTime=end - timedelta(minutes=10),
        EndTime=end,
        Period=600,
        Statistics=[stat],
    )
    return float(sum(p[stat] for p in got["Datapoints"]))


def test_each_period_puts_every_ticks_figures_as_one_statistic_set(moto: str) -> None:
    cw, clock = client("cloudwatch", "us-east-1", moto), Clock()
    sink = CloudWatchMetrics(cw, "d1", every_s=60, clock=clock)
    for t, backlog in ((1, 3.0), (30, 9.0), (59, 5.0)):  # within the first period: nothing put
        clock.now = t
        sink.observe({"Backlog": backlog, "WorkerCPU": None}, {"DeadLetters": 2})
    assert cw.list_metrics(Namespace=NAMESPACE)["Metrics"] == []
    clock.now = 61
    sink.observe({"Backlog": 1.0}, {"DeadLetters": 2})  # the period is over: one put
    assert (_stats(cw, "Backlog", "Maximum"), _stats(cw, "Backlog", "Minimum")) == (9.0, 1.0)
    assert _stats(cw, "Backlog", "SampleCount") == 4  # a peak between puts is not lost
    assert {m["MetricName"] for m in cw.list_metrics(Namespace=NAMESPACE)["Metrics"]} == {"Backlog", "DeadLetters"}
    clock.now = 125
    sink.observe({"Backlog": 0.0}, {"DeadLetters": 7})  # counters: what they grew by
    assert _stats(cw, "DeadLetters", "Sum") == 2 + 5
    shown = latest(cw, "d1")
    assert shown["Backlog"] is not None and shown["WorkerCPU"] is None


def test_a_refused_put_is_said_once_and_its_counts_go_with_the_next(
    moto: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    refused = client("cloudwatch", "us-east-1", "http://127.0.0.1:9")  # nothing listens: every put fails
    sink = CloudWatchMetrics(refused, "d1", every_s=1, clock=clock)
    with caplog.at_level(logging.ERROR, "iraas.cloudwatch"):
        for t in (2, 4, 6):
            clock.now = t
            sink.observe({"Backlog": 1.0}, {"DeadLetters": 3})
    assert len(caplog.records) == 1 and "tried again next period" in caplog.text
    sink.client = client("cloudwatch", "us-east-1", moto)  # reachable again
    clock.now = 8
    sink.observe({"Backlog": 1.0}, {"DeadLetters": 3})
    assert _stats(sink.client, "DeadLetters", "Sum") == 3  # nothing counted was lost
