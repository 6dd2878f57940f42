"""The service on the AWS backends, end to end through moto's SQS, S3, EC2 and CloudFormation.

moto does not run user-data, so a harness plays the EC2 hypervisor: for every worker instance
moto reports pending or running it starts a local `iraas worker` with that instance's
settings, stops it when the instance is terminated, and terminates the instance when its
worker exits by itself (shutdown behaviour "terminate").
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from iraas.aws.deploy import Aws, deploy, destroy, stack_name
from iraas.fleet.ec2 import Ec2Fleet
from iraas.model.classifier import Classifier

from .conftest import IMAGENET
from .service import free_port

NAME = "e2e"


class Hypervisor:
    def __init__(self, aws: Aws, endpoint: str, bucket: str, logs: Path) -> None:
        self.aws, self.endpoint, self.bucket, self.logs = aws, endpoint, bucket, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.peak = 0
        self.launched: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Hypervisor:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        for proc in self.procs.values():
            proc.terminate()
            proc.wait(30)

    def workers(self) -> dict[str, str]:
        filters = [{"Name": "tag:iraas:deployment", "Values": [NAME]}, {"Name": "tag:iraas:role", "Values": ["worker"]}]
        resp = self.aws.ec2.describe_instances(Filters=filters)
        return {i["InstanceId"]: i["State"]["Name"] for r in resp["Reservations"] for i in r["Instances"]}

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            states = self.workers()
            live = [i for i, s in states.items() if s in ("pending", "running")]
            self.peak = max(self.peak, len(live))
            for iid in live:
                if iid not in self.procs:
                    self.procs[iid] = self._boot(iid)
                    self.launched.add(iid)
                elif self.procs[iid].poll() is not None:  # the worker shut its instance down
                    self.aws.ec2.terminate_instances(InstanceIds=[iid])
            for iid, state in states.items():
                proc = self.procs.get(iid)
                if state not in ("pending", "running") and proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)

    def _boot(self, iid: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "IRAAS_WORKER_ID": iid}
        args = [
            sys.executable,
            "-m",
            "iraas.cli",
            "worker",
            "--backend",
            "aws",
            "--name",
            NAME,
            "--bucket",
            self.bucket,
            "--aws-endpoint-url",
            self.endpoint,
            "--aws-region",
            "us-east-1",
            "--heartbeat-s",
            "0.5",
            "--visibility-s",
            "20",
        ]
        with open(self.logs / f"{iid}.log", "ab") as log:
            return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture
def deployed(moto: str, tmp_path: Path) -> Iterator[tuple[Aws, dict[str, str]]]:
    aws = Aws.connect("us-east-1", moto)
    wheel = tmp_path / "iraas-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"the harness runs the source tree; user-data is not run by moto")
    yield aws, deploy(aws, NAME, wheel, max_workers=3)


def _up(moto: str, tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "iraas.cli",
        "up",
        "--backend",
        "aws",
        "--name",
        NAME,
        "--aws-endpoint-url",
        moto,
        "--aws-region",
        "us-east-1",
        "--port",
        str(port),
        "--max-workers",
        "3",
        "--target-per-worker",
        "4",
        "--scale-in-after-s",
        "2",
        "--heartbeat-stale-s",
        "20",
        "--start-grace-s",
        "60",
        "--visibility-s",
        "20",
    ]
    with open(tmp_path / "up.log", "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError((tmp_path / "up.log").read_text())


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out: {what}")


def test_burst_scales_out_on_ec2_answers_right_scales_in_and_destroy_leaves_nothing(
    moto: str, deployed: tuple[Aws, dict[str, str]], tmp_path: Path, classifier: Classifier
) -> None:
    aws, out = deployed
    up, url = _up(moto, tmp_path)
    files = sorted((IMAGENET / "images").iterdir())[300:324]
    try:
        with Hypervisor(aws, moto, out["Bucket"], tmp_path) as hv:

            def one(f: Path) -> dict[str, Any]:
                r = httpx.post(url + "/v1/recognitions", files={"files": (f.name, f.read_bytes())}, timeout=180)
                assert r.status_code == 200, r.text
                return dict(r.json()[0])

            with ThreadPoolExecutor(len(files)) as pool:
                results = list(pool.map(one, files))
            expected = [p.label for p in classifier.predict([f.read_bytes() for f in files])]
            assert [r["label"] for r in results] == expected
            assert all(r["worker"] in hv.launched for r in results)  # answered by EC2 "instances"
            assert 2 <= hv.peak <= 3  # scaled out, bounded by max_workers
            _wait(
                lambda: not [s for s in hv.workers().values() if s in ("pending", "running")],
                60,
                "idle fleet back to min_workers (0)",
            )
            cluster = httpx.get(url + "/v1/cluster").json()
            assert any("scale in" in d["reason"] for d in cluster["decisions"])
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(30)
    removed = destroy(aws, NAME)
    assert removed
    live = [s for s in Hypervisor(aws, moto, "", tmp_path).workers().values() if s != "terminated"]
    all_live = aws.ec2.describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]
    )
    assert not live and not all_live["Reservations"]
    assert not aws.sqs.list_queues(QueueNamePrefix=f"{NAME}-").get("QueueUrls")
    assert not [b for b in aws.s3.list_buckets()["Buckets"] if b["Name"] == out["Bucket"]]
    stacks = aws.cfn.list_stacks()["StackSummaries"]
    assert all(s["StackStatus"] == "DELETE_COMPLETE" for s in stacks if s["StackName"] == stack_name(NAME))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _run_response(n: int) -> dict[str, Any]:
    return {"Instances": [{"InstanceId": f"i-{k:017x}"} for k in range(n)], "ReservationId": "r-1", "OwnerId": "1"}


def test_capacity_and_throttling_errors_back_off_and_are_reported(moto: str) -> None:
    aws = Aws.connect("us-east-1", moto)
    clock = Clock()
    fleet = Ec2Fleet(aws.ec2, NAME, f"{NAME}-worker", clock=clock)
    with Stubber(aws.ec2) as stub:
        stub.add_client_error("run_instances", "InsufficientInstanceCapacity", "no c7i.large in us-east-1a")
        assert fleet.launch(2) == []
        assert fleet.errors[-1]["code"] == "InsufficientInstanceCapacity"
        assert fleet.launch(2) == []  # backing off: no call at all (the stubber would refuse one)
        clock.now += 1.5
        stub.add_client_error("run_instances", "RequestLimitExceeded", "slow down")
        assert fleet.launch(2) == []
        assert [e["code"] for e in fleet.errors] == ["InsufficientInstanceCapacity", "RequestLimitExceeded"]
        assert fleet.errors[-1]["retry_in_s"] == 2.0  # doubled
        clock.now += 2.5
        stub.add_response("run_instances", _run_response(2))
        assert len(fleet.launch(2)) == 2
        stub.assert_no_pending_responses()


def test_controller_survives_a_throttled_describe_and_reports_fleet_errors(
    moto: str, deployed: tuple[Aws, dict[str, str]]
) -> None:
    from iraas.backends import aws as aws_backends
    from iraas.config import Settings
    from iraas.controller import Controller

    aws, out = deployed
    settings = Settings(
        backend="aws",
        name=NAME,
        bucket=out["Bucket"],
        aws_endpoint_url=moto,
        aws_region="us-east-1",
        max_workers=2,
        tick_s=0.05,
    )
    b = aws_backends(settings)
    fleet = Ec2Fleet(aws.ec2, NAME, f"{NAME}-worker")
    ctl = Controller(b, fleet, settings)
    calls = {"n": 0}
    real_list = fleet.list

    def flaky_list() -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ClientError({"Error": {"Code": "RequestLimitExceeded", "Message": "slow down"}}, "DescribeInstances")
        return real_list()

    fleet.list = flaky_list  # type: ignore[method-assign]
    fleet.errors.append({"at": datetime.now().timestamp(), "code": "InsufficientInstanceCapacity", "retry_in_s": 1})
    stop = threading.Event()
    thread = threading.Thread(target=ctl.run, args=(stop,))
    thread.start()
    _wait(lambda: calls["n"] >= 3, 30, "ticks after the throttled one")
    stop.set()
    thread.join()
    status = b.cluster_status()
    assert status["fleet_errors"][-1]["code"] == "InsufficientInstanceCapacity"
