"""The service on the AWS backends, end to end through moto's SQS, S3, EC2 and CloudFormation.

moto does not run user-data, so a harness plays the EC2 hypervisor: for every worker instance
moto reports pending or running it starts a local `iraas worker` with that instance's
settings, stops it when the instance is terminated, and terminates the instance when its
worker exits by itself (shutdown behaviour "terminate").
"""

from __future__ import annotations

import ast
import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from iraas.aws.deploy import Aws, deploy, destroy, stack_name, webhook_secret_name
from iraas.controller import Controller
from iraas.fleet.base import Fleet
from iraas.fleet.ec2 import Ec2Fleet
from iraas.model.classifier import Classifier
from iraas.parts import Parts
from iraas.signing import verify

from . import iampolicy
from .conftest import IMAGENET, ROOT
from .receiver import Received, receiver
from .service import free_port

NAME = "e2e"


class Hypervisor:
    """`env`: the worker role's credentials (and whatever else the instances' user-data sets);
    `extra`: more worker flags (the model)."""

    def __init__(
        self,
        aws: Aws,
        endpoint: str,
        bucket: str,
        logs: Path,
        env: dict[str, str] | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.aws, self.endpoint, self.bucket, self.logs = aws, endpoint, bucket, logs
        self.env, self.extra = env or {}, list(extra)
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
        env = {**os.environ, **self.env}
        args = [
            *recorded(self.logs / f"{iid}.calls.jsonl"),
            "worker",
            "--worker-id",
            iid,
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
            *self.extra,
        ]
        with open(self.logs / f"{iid}.log", "ab") as log:
            return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


CIDR = "127.0.0.1/32"


def admin(out: dict[str, str]) -> dict[str, str]:
    """The admin key the first deploy made and returned once, as a request header."""
    return {"Authorization": f"Bearer {out['AdminKey']}"}


def _deploy(aws: Aws, tmp_path: Path, **options: Any) -> dict[str, str]:
    """Deploy the stack as the tests run it: a stand-in wheel (the harness runs the source tree;
    moto runs no user-data), a lock made without the index, `CIDR` allowed."""
    wheel = tmp_path / "iraas-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"the harness runs the source tree; user-data is not run by moto")
    return deploy(aws, NAME, wheel, lock=_lock(tmp_path, wheel), allowed_cidr=CIDR, **options)


def recorded(calls: Path) -> list[str]:
    """Run iraas with every AWS call it makes written to `calls` (tests/awscalls.py)."""
    return [sys.executable, "-m", "tests.awscalls", str(calls)]


@pytest.fixture
def deployed(moto: str, tmp_path: Path) -> Iterator[tuple[Aws, dict[str, str]]]:
    aws = Aws.connect("us-east-1", moto)
    yield aws, _deploy(aws, tmp_path, max_workers=3)


def _up(
    moto: str, tmp_path: Path, bucket: str, env: dict[str, str] | None = None, extra: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    args = [
        *recorded(tmp_path / "up.calls.jsonl"),
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
        "--bucket",  # as the web instance's user-data gives it: the role may not read the stack
        bucket,
        *extra,
    ]
    with open(tmp_path / "up.log", "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=ROOT)
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


@pytest.fixture
def deployer(moto: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    """moto with IAM enforced from here on, and an administrator identity (the deploying one)
    made while it was not yet."""
    import boto3
    from moto import settings as moto_settings

    iam = boto3.client("iam", endpoint_url=moto, region_name="us-east-1")
    iam.create_user(UserName="deployer")
    iam.put_user_policy(UserName="deployer", PolicyName="admin", PolicyDocument=json.dumps(ADMIN))
    key = iam.create_access_key(UserName="deployer")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # clients made from now on use the deployer
    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    yield Aws.connect("us-east-1", moto)


ADMIN = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
ACCOUNT = "123456789012"  # moto's


@dataclass
class Role:
    name: str  # the IAM role the stack made
    policy: dict[str, Any]  # its policy, as CloudFormation resolved the template's
    env: dict[str, str]  # credentials whose only permissions are moto's projection of it

    def principal(self) -> str:
        return f"arn:aws:sts::{ACCOUNT}:assumed-role/{self.name}/i-0"


def _role(aws: Aws, iam: Any, logical: str, without: str = "") -> Role:
    """`without`: that statement (Sid) taken out, as a misconfigured deployment would have it."""
    (name,) = [r["RoleName"] for r in iam.list_roles()["Roles"] if r["RoleName"].startswith(f"iraas-{NAME}-{logical}-")]
    (policy_name,) = iam.list_role_policies(RoleName=name)["PolicyNames"]
    policy = iam.get_role_policy(RoleName=name, PolicyName=policy_name)["PolicyDocument"]
    if isinstance(policy, str):  # moto keeps a CloudFormation-made policy as Python's repr of it
        policy = ast.literal_eval(policy)
    # A statement under Fn::If whose condition is false is AWS::NoValue: CloudFormation leaves it
    # out, moto leaves a null in its place.
    policy["Statement"] = [stmt for stmt in policy["Statement"] if stmt is not None]
    if without:
        policy = iampolicy.without(policy, without)
    user = f"{logical}-under-test"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="role", PolicyDocument=json.dumps(iampolicy.moto_projection(policy)))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return Role(
        name, policy, {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    )


def _deployment(aws: Aws, out: dict[str, str], worker: Role) -> iampolicy.Deployment:
    (version,) = aws.ec2.describe_launch_template_versions(LaunchTemplateName=f"{NAME}-worker", Versions=["$Latest"])[
        "LaunchTemplateVersions"
    ]
    tags = {
        i["InstanceId"]: {t["Key"]: t["Value"] for t in i.get("Tags", [])}
        for r in aws.ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
    }
    groups = boto3_client("autoscaling", aws.endpoint_url or "").describe_auto_scaling_groups()["AutoScalingGroups"]
    return iampolicy.Deployment(
        account=ACCOUNT,
        region="us-east-1",
        worker_role_arn=f"arn:aws:iam::{ACCOUNT}:role/{worker.name}",
        template_arn=f"arn:aws:ec2:us-east-1:{ACCOUNT}:launch-template/{version['LaunchTemplateId']}",
        template=version["LaunchTemplateData"],
        instance_tags=tags,
        groups={g["AutoScalingGroupName"]: g["AutoScalingGroupARN"] for g in groups},
    )


def _judge(aws: Aws, out: dict[str, str], roles: dict[str, tuple[Role, list[Path]]]) -> list[str]:
    """Every call each process made, evaluated against its role's exact policy: the refused ones
    fail the test; each statement that allowed a call must be the only one allowing some call;
    returns the permissions the run never used."""
    worker = roles["worker"][0]
    dep = _deployment(aws, out, worker)
    bucket_policy = _bucket_policy(aws, out["Bucket"])
    policies: dict[str, dict[str, Any]] = {}
    asks: list[tuple[str, str, iampolicy.Auth]] = []
    for key, (role, logs) in roles.items():
        auths = sorted({a for call in iampolicy.load_calls(logs) for a in iampolicy.authorizations(call, dep)}, key=str)
        assert auths, f"no AWS calls recorded for the {key} role"
        policies[key] = role.policy
        asks += [(role.principal(), key, a) for a in auths]
        for stmt in role.policy["Statement"]:
            policies[f"{key}-{stmt['Sid']}"] = iampolicy.without(role.policy, stmt["Sid"])
            asks += [(role.principal(), f"{key}-{stmt['Sid']}", a) for a in auths]
    decisions = iampolicy.evaluate(policies, asks, account=ACCOUNT, bucket_policy=bucket_policy, bucket=out["Bucket"])
    by_policy: dict[str, list[iampolicy.Decision]] = {}
    for (_, name, _), d in zip(asks, decisions, strict=True):
        by_policy.setdefault(name, []).append(d)
    unused = []
    for key, (role, _) in roles.items():
        refused = [
            f"{d.auth.action} {d.auth.resource} {dict(d.auth.context)} <- {d.auth.why}"
            for d in by_policy[key]
            if not d.allowed
        ]
        assert not refused, f"the {key} role's policy refuses calls it made:\n" + "\n".join(refused)
        never = iampolicy.unused(role.policy, by_policy[key])
        unused += [f"{key} {u}" for u in never]
        for stmt in role.policy["Statement"]:
            if any(stmt["Sid"] in d.allowed_by for d in by_policy[key]):
                gaps = [d for d in by_policy[f"{key}-{stmt['Sid']}"] if not d.allowed]
                assert gaps, f"{key}: statement {stmt['Sid']} is redundant: another statement allows all it allowed"
    return unused


def _run_under_roles(
    moto: str,
    aws: Aws,
    tmp_path: Path,
    burst: Callable[[str, dict[str, str]], set[str]],
    model: str = "",
    gallery: str = "",
    web_flags: Sequence[str] = (),
) -> None:
    """Deploy; run the web tier + controller and every worker each under its role's policy;
    `burst` (it answers which workers answered); check the fleet went back to zero and every
    call each made was allowed; destroy. `web_flags`: the web instance's more settings."""
    kind = {"model": model, "gallery": gallery} if model else {}
    out = _deploy(aws, tmp_path, max_workers=3, **kind)
    iam = boto3_client("iam", moto)
    web, worker = _role(aws, iam, "ControllerRole"), _role(aws, iam, "WorkerRole")
    flags = ["--model", model] if model else []
    # as the web instance's user data sets it: the secret's ARN, its value read at start
    secret_arn = {"IRAAS_WEBHOOK_SECRET_ARN": aws.secrets.describe_secret(SecretId=webhook_secret_name(NAME))["ARN"]}
    up, url = _up(moto, tmp_path, out["Bucket"], {**web.env, **secret_arn}, [*flags, *web_flags])
    try:
        with Hypervisor(aws, moto, out["Bucket"], tmp_path, worker.env, flags) as hv:
            answered_by = burst(url, admin(out))
            assert answered_by <= hv.launched  # answered by EC2 "instances"
            assert 2 <= hv.peak <= 3  # scaled out, bounded by max_workers
            _wait(
                lambda: not [s for s in hv.workers().values() if s in ("pending", "running")],
                60,
                "idle fleet back to min_workers (0)",
            )
            cluster = httpx.get(url + "/v1/cluster", headers=admin(out)).json()
            assert any("scale in" in d["reason"] for d in cluster["decisions"])
            assert httpx.get(url + "/readyz").status_code == 200
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(30)
    unused = _judge(
        aws,
        out,
        {"web": (web, [tmp_path / "up.calls.jsonl"]), "worker": (worker, sorted(tmp_path.glob("i-*.calls.jsonl")))},
    )
    print("permissions the run never used:", *unused, sep="\n  ")
    assert destroy(aws, NAME)
    live = [s for s in Hypervisor(aws, moto, "", tmp_path).workers().values() if s != "terminated"]
    all_live = aws.ec2.describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]
    )
    assert not live and not all_live["Reservations"]
    assert not aws.sqs.list_queues(QueueNamePrefix=f"{NAME}-").get("QueueUrls")
    assert not [b for b in aws.s3.list_buckets()["Buckets"] if b["Name"] == out["Bucket"]]
    assert not aws.secrets.list_secrets()["SecretList"]
    stacks = aws.cfn.list_stacks()["StackSummaries"]
    assert all(s["StackStatus"] == "DELETE_COMPLETE" for s in stacks if s["StackName"] == stack_name(NAME))


def _recognise_all(url: str, files: list[Path], auth: dict[str, str]) -> list[dict[str, Any]]:
    """Each file in its own request, all at once; the results in the files' order."""

    def one(f: Path) -> dict[str, Any]:
        r = httpx.post(url + "/v1/recognitions", files={"files": (f.name, f.read_bytes())}, headers=auth, timeout=180)
        assert r.status_code == 200, r.text
        return dict(r.json()[0])

    with ThreadPoolExecutor(len(files)) as pool:
        return list(pool.map(one, files))


def test_under_each_roles_own_policy_a_burst_scales_out_answers_right_scales_in_and_destroy_leaves_nothing(
    moto: str, deployer: Aws, tmp_path: Path, classifier: Classifier
) -> None:
    files = sorted((IMAGENET / "images").iterdir())[300:324]

    def burst(url: str, auth: dict[str, str]) -> set[str]:
        # deploy made the secret in Secrets Manager; the web role read it at start
        secret = deployer.secrets.get_secret_value(SecretId=webhook_secret_name(NAME))["SecretString"]
        with receiver(answers=[503]) as hooks:
            # three of them asked for a webhook too: the worker queues its delivery on the SQS
            # webhooks queue and records it in S3, the controller's deliverer sends it (the
            # first attempt gets a 503 and is retried) — each under its own role
            hooked = files[:3]
            sent = [
                httpx.post(
                    url + "/v1/recognitions?wait=false",
                    files={"files": (f.name, f.read_bytes())},
                    data={"callback_url": hooks.url},
                    headers=auth,
                    timeout=60,
                )
                for f in hooked
            ]
            assert [r.status_code for r in sent] == [202] * 3, [r.text for r in sent]
            results = _recognise_all(url, files[3:], auth)
            got = hooks.wait(4, timeout=90)
            ids = [r.json()[0]["id"] for r in sent]
            _wait(lambda: all(_callback(url, i, auth)["status"] == "delivered" for i in ids), 60, "webhooks delivered")
        events = [json.loads(g.body) for g in got if _signed(secret, g)]
        assert len(events) == len(got)  # every attempt signed with the deployment's secret
        assert sorted({e["data"]["id"] for e in events}) == sorted(ids)
        expected = [p.label for p in classifier.predict([f.read_bytes() for f in files])]
        hooked_labels = {e["data"]["id"]: e["data"]["label"] for e in events}
        assert [hooked_labels[i] for i in ids] + [r["label"] for r in results] == expected
        assert sorted(_callback(url, i, auth)["attempts"] for i in ids) == [1, 1, 2]
        _published_what_the_alarms_and_dashboard_watch(deployer)
        return {r["worker"] for r in results}

    web_flags = ["--url-allow", "127.0.0.1", "--webhook-backoff-s", "1", "--metrics-every-s", "1"]
    _run_under_roles(moto, deployer, tmp_path, burst, web_flags=web_flags)


def _published_what_the_alarms_and_dashboard_watch(aws: Aws) -> None:
    """The controller (under its role: judged with the rest) put its figures into CloudWatch;
    `iraas aws status` shows them; every iraas metric the stack's alarms and dashboard watch is
    one it puts, with the deployment's dimension. (moto makes no alarms from a template: their
    definitions are read from it, as CloudFormation would resolve them.)"""
    from iraas.aws.deploy import TEMPLATE, status
    from iraas.cloudwatch import COUNTERS, GAUGES

    def shown() -> dict[str, Any]:
        return dict(status(aws, NAME)["metrics"])

    _wait(lambda: (shown()["Workers"] or 0) >= 2 and shown()["Backlog"] is not None, 60, "figures put to CloudWatch")
    listed = aws.cloudwatch.list_metrics(Namespace="iraas")["Metrics"]
    put = {m["MetricName"] for m in listed if m["Dimensions"] == [{"Name": "Deployment", "Value": NAME}]}
    assert put >= {"Backlog", "Waiting", "InFlight", "Workers", "BusyWorkers", "WorkerCPU", "DeadLetters"}
    assert put <= set(GAUGES) | set(COUNTERS)
    template = _template(TEMPLATE)
    alarms = [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    assert len(alarms) == 3
    for alarm in alarms:
        if alarm["Namespace"] == "iraas":
            assert alarm["MetricName"] in set(GAUGES) | set(COUNTERS)
            assert alarm["Dimensions"] == [{"Name": "Deployment", "Value": {"Ref": "DeploymentName"}}]
        else:  # SQS's own age of the oldest message, of the requests queue the stack made
            assert (alarm["Namespace"], alarm["Dimensions"][0]["Value"]) == (
                "AWS/SQS",
                {"Fn::GetAtt": ["RequestsQueue", "QueueName"]},
            )
    board = json.loads(aws.cloudwatch.get_dashboard(DashboardName=f"iraas-{NAME}")["DashboardBody"])
    watched = [m for w in board["widgets"] for m in w["properties"].get("metrics", [])]
    assert {m[1] for m in watched if m[0] == "iraas"} <= put | set(COUNTERS)
    assert all(m[3] == NAME for m in watched if m[0] == "iraas")
    assert [m[3] for m in watched if m[0] == "AWS/SQS"] == [f"{NAME}-requests"]


def _template(path: Path) -> dict[str, Any]:
    from cfnlint.decode import decode

    template, errors = decode(str(path))
    assert not errors and template is not None
    return dict(template)


def _signed(secret: str, got: Received) -> bool:
    h = got.headers
    return verify(secret, h["webhook-id"], h["webhook-timestamp"], got.body, h["webhook-signature"])


def _callback(url: str, rid: str, auth: dict[str, str]) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/v1/recognitions/{rid}", headers=auth, timeout=10).json()["callback"])


def test_a_faces_deployment_under_its_roles_recognises_and_enrols(moto: str, deployer: Aws, tmp_path: Path) -> None:
    from .test_faces import COURSE, _course_gallery

    with open(COURSE / "labels-100.csv", newline="") as f:
        truth = {r["Image"]: r["Results"] for r in csv.DictReader(f)}
    files = sorted((COURSE / "face_images_100").iterdir())[:16]
    gallery = _course_gallery(tmp_path / "gallery")

    def burst(url: str, auth: dict[str, str]) -> set[str]:
        results = _recognise_all(url, files, auth)
        assert [r["label"] for r in results] == [truth[f.stem] for f in files]
        # an enrolment through the API is a worker's job: it writes the enrolment, bumps the version
        newcomer = sorted((COURSE / "face_images_1000").iterdir())[-1]
        r = httpx.post(
            url + "/v1/gallery/Newcomer",
            files={"files": (newcomer.name, newcomer.read_bytes())},
            headers=auth,
            timeout=180,
        )
        assert r.status_code == 200, r.text
        gallery = lambda: httpx.get(url + "/v1/gallery", headers=auth).json()["people"]  # noqa: E731
        _wait(lambda: "Newcomer" in gallery(), 30, "the enrolment counted")
        return {r["worker"] for r in results}

    _run_under_roles(moto, deployer, tmp_path, burst, model="faces", gallery=str(gallery))


def test_a_missing_permission_is_reported_as_a_configuration_error_not_a_crash(
    moto: str, deployer: Aws, tmp_path: Path
) -> None:
    out = _deploy(deployer, tmp_path, max_workers=1)
    iam = boto3_client("iam", moto)
    web = _role(deployer, iam, "ControllerRole", without="SendRequests")
    up, url = _up(moto, tmp_path, out["Bucket"], web.env)
    try:
        ready = httpx.get(url + "/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["status"] == "misconfigured"
        detail = ready.json()["detail"]  # which call, and where to look
        assert "refused sqs get_queue_attributes on e2e-requests" in detail and "iraas aws doctor" in detail
        photo = IMAGENET / "images" / "n01440764_tench.JPEG"
        r = httpx.post(
            url + "/v1/recognitions",
            files={"files": (photo.name, photo.read_bytes())},
            headers=admin(out),
            timeout=30,
        )
        assert r.status_code == 503 and r.json()["error"] == "misconfigured" and "Retry-After" in r.headers
        assert "sqs" not in r.text  # which permission is the operator's business: in the log
        cluster = httpx.get(url + "/v1/cluster", headers=admin(out), timeout=10).json()
        assert "refused sqs" in cluster["config_errors"][0]
        time.sleep(2)  # controller ticks fail the same way: logged, never fatal
        assert up.poll() is None
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(30)
    log = (tmp_path / "up.log").read_text()
    assert "a configuration error" in log and "Traceback" not in log.split("controller tick failed", 1)[-1][:300]


def test_a_worker_whose_role_may_not_take_requests_says_so_and_ends_when_idle(
    moto: str, deployer: Aws, tmp_path: Path
) -> None:
    out = _deploy(deployer, tmp_path, max_workers=1)
    role = _role(deployer, boto3_client("iam", moto), "WorkerRole", without="TakeRequests")
    args = [*recorded(tmp_path / "w.calls.jsonl"), "worker", "--worker-id", "i-0refused", "--backend", "aws"]
    args += ["--name", NAME]
    args += ["--bucket", out["Bucket"], "--aws-endpoint-url", moto, "--aws-region", "us-east-1"]
    args += ["--heartbeat-s", "0.2", "--worker-max-idle-s", "3"]
    env = {**os.environ, **role.env}
    done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr  # ended when idle, not crashed
    assert done.stderr.count("AWS refused sqs receive_message") == 1  # said once, clearly
    assert "Traceback" not in done.stderr
    beats = [json.loads(line) for line in (tmp_path / "w.calls.jsonl").read_text().splitlines()]
    assert any(b["operation"] == "PutObject" for b in beats)  # its heartbeats went on


def _doctor(moto: str, role: Role, which: str, bucket: str) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "iraas.cli", "aws", "doctor", "--name", NAME, "--role", which, "--bucket", bucket]
    args += ["--endpoint-url", moto, "--region", "us-east-1"]
    return subprocess.run(args, env={**os.environ, **role.env}, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_doctor_names_the_permission_a_role_lacks(moto: str, deployer: Aws, tmp_path: Path) -> None:
    out = _deploy(deployer, tmp_path, max_workers=1)
    iam = boto3_client("iam", moto)
    web, worker = _role(deployer, iam, "ControllerRole"), _role(deployer, iam, "WorkerRole")
    for role, which in ((web, "web"), (worker, "worker")):  # web first: it makes the probe reply queue
        done = _doctor(moto, role, which, out["Bucket"])
        print(done.stdout)
        assert done.returncode == 0 and "nothing missing" in done.stdout, done.stdout + done.stderr
        assert "MISSING" not in done.stdout and "inconclusive" not in done.stdout
    # nothing written: reads were of missing keys, writes carried a wrong digest (AWS refuses
    # them after authorizing; moto keeps them, so only the keys are checked), the queue is empty
    depth = deployer.sqs.get_queue_attributes(
        QueueUrl=out["RequestsQueueUrl"], AttributeNames=["ApproximateNumberOfMessages"]
    )
    assert depth["Attributes"]["ApproximateNumberOfMessages"] == "0"
    for role_name, logical, sid, missing in (
        ("worker", "WorkerRole", "TakeRequests", f"sqs:ReceiveMessage on {NAME}-requests"),
        ("worker", "WorkerRole", "ReadInputsResultsGallery", "s3:GetObject on inputs/*"),
        ("web", "ControllerRole", "OwnReplyQueues", f"sqs:CreateQueue on {NAME}-replies-*"),
        ("web", "ControllerRole", "WriteBlobs", "s3:PutObject on inputs/doctor"),
        ("web", "ControllerRole", "ReadWebhookSecret", f"secretsmanager:GetSecretValue on iraas/{NAME}/webhook-secret"),
        ("worker", "WorkerRole", "QueueWebhooks", f"sqs:SendMessage on {NAME}-webhooks"),
    ):
        iam.delete_user_policy(UserName=f"{logical}-under-test", PolicyName="role")
        for key in iam.list_access_keys(UserName=f"{logical}-under-test")["AccessKeyMetadata"]:
            iam.delete_access_key(UserName=f"{logical}-under-test", AccessKeyId=key["AccessKeyId"])
        iam.delete_user(UserName=f"{logical}-under-test")
        lacking = _role(deployer, iam, logical, without=sid)
        done = _doctor(moto, lacking, role_name, out["Bucket"])
        assert done.returncode == 1, done.stdout
        assert f"MISSING {missing}" in done.stdout, done.stdout


def _bucket_policy(aws: Aws, bucket: str) -> dict[str, Any]:
    """The template's bucket policy, resolved for this stack. moto's CloudFormation makes none,
    and moto would misjudge it (it reads a Deny's unmet condition as a deny of every write), so
    only the evaluator applies it."""
    from cfnlint.decode import decode

    from iraas.aws.deploy import TEMPLATE

    template, _ = decode(str(TEMPLATE))
    assert template is not None
    values = {"Bucket.Arn": f"arn:aws:s3:::{bucket}", "DeployerArn": aws.caller_arn()}

    def resolve(node: Any) -> Any:
        if isinstance(node, dict) and set(node) == {"Ref"}:
            return values[node["Ref"]]
        if isinstance(node, dict) and set(node) == {"Fn::Sub"}:
            return re.sub(r"\$\{([^}]+)\}", lambda m: values[m.group(1)], node["Fn::Sub"])
        if isinstance(node, dict):
            return {k: resolve(v) for k, v in node.items()}
        return [resolve(v) for v in node] if isinstance(node, list) else node

    return dict(resolve(template["Resources"]["BucketPolicy"]["Properties"]["PolicyDocument"]))


def _lock(tmp_path: Path, wheel: Path) -> Path:
    """The harness runs the source tree, so the lock only has to be well-formed here (the real
    one is resolved in tests/test_aws_template.py)."""
    from iraas.aws.lock import lock_text

    path = tmp_path / "requirements.lock"
    path.write_text(lock_text(wheel, [("numpy", "2.4.6", "0" * 64)]))
    return path


def boto3_client(service: str, moto: str) -> Any:
    import boto3

    return boto3.client(service, endpoint_url=moto, region_name="us-east-1")


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


def _controller(
    moto: str, out: dict[str, str], clock: Callable[[], float] = time.time, **settings: Any
) -> tuple[Parts, Fleet, Controller]:
    """The deployment's store, fleet (as `iraas up` makes them, from the settings) and a controller."""
    from iraas.config import Settings
    from iraas.parts import build, make_controller, make_fleet

    s = Settings(
        backend="aws", name=NAME, bucket=out["Bucket"], aws_endpoint_url=moto, aws_region="us-east-1", **settings
    )
    store, fleet = build(s), make_fleet(s)
    return store, fleet, make_controller(store, fleet, s, clock=clock)


def test_controller_survives_a_throttled_describe_and_reports_fleet_errors(
    moto: str, deployed: tuple[Aws, dict[str, str]]
) -> None:
    b, fleet, ctl = _controller(moto, deployed[1], max_workers=2, tick_s=0.05)
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
    status = b.cluster.status()
    assert status.fleet_errors[-1]["code"] == "InsufficientInstanceCapacity"


def _states(aws: Aws) -> dict[str, str]:
    pages = aws.ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": "tag:iraas:deployment", "Values": [NAME]}, {"Name": "tag:iraas:role", "Values": ["worker"]}]
    )
    return {i["InstanceId"]: i["State"]["Name"] for p in pages for r in p["Reservations"] for i in r["Instances"]}


def test_a_warm_pool_stops_scaled_in_workers_and_starts_them_again_never_past_max(
    moto: str, deployed: tuple[Aws, dict[str, str]]
) -> None:
    """--warm-pool 2, max 3: a scale-in keeps two stopped (the third ends), the next burst starts
    those two again and launches one, a hung worker is never pooled, and no tick ever has more
    than max workers pending or running."""
    aws = deployed[0]
    clock = [time.time()]
    store, fleet, ctl = _controller(
        moto,
        deployed[1],
        lambda: clock[0],
        max_workers=3,
        warm_pool=2,
        target_per_worker=1,
        scale_in_after_s=5,
        start_grace_s=1e6,  # no heartbeats here: nobody is replaced for lacking one
    )
    peak = 0

    def tick() -> dict[str, str]:
        nonlocal peak
        ctl.tick()
        states = _states(aws)
        peak = max(peak, sum(s in ("pending", "running") for s in states.values()))
        return states

    store.requests.send_batch([f'{{"burst": {i}}}' for i in range(6)])
    for _ in range(4):  # moto launches MinCount (1) per call where AWS gives MaxCount: a tick each
        first = {i for i, s in tick().items() if s in ("pending", "running")}
    assert len(first) == 3  # nothing pooled yet: three new instances
    store.requests.purge()
    for _ in range(3):
        clock[0] += 3
        states = tick()
    pooled = {i for i, s in states.items() if s in ("stopping", "stopped")}
    assert len(pooled) == 2 and pooled < first
    assert [s for i, s in states.items() if i in first - pooled] in (["shutting-down"], ["terminated"])
    assert (store.cluster.status().warm or {})["size"] == 2

    tick()  # the pool as it stands (stopped), then a burst
    store.requests.send_batch([f'{{"again": {i}}}' for i in range(6)])
    for _ in range(3):
        clock[0] += 1
        states = tick()
    running = {i for i, s in states.items() if s in ("pending", "running")}
    assert pooled < running and len(running) == 3  # the pooled two started, one launched
    assert not any(s == "stopped" for s in states.values())

    fleet.kill([next(iter(pooled))])  # a hung worker: terminated, not kept
    assert _states(aws)[next(iter(pooled))] in ("shutting-down", "terminated")
    assert peak == 3


def test_a_web_role_that_may_not_read_the_webhook_secret_runs_with_webhooks_off_and_says_why(
    moto: str, deployer: Aws, tmp_path: Path
) -> None:
    out = _deploy(deployer, tmp_path, max_workers=1)
    web = _role(deployer, boto3_client("iam", moto), "ControllerRole", without="ReadWebhookSecret")
    arn = deployer.secrets.describe_secret(SecretId=webhook_secret_name(NAME))["ARN"]
    up, url = _up(moto, tmp_path, out["Bucket"], {**web.env, "IRAAS_WEBHOOK_SECRET_ARN": arn})
    try:
        photo = IMAGENET / "images" / "n01440764_tench.JPEG"
        r = httpx.post(
            url + "/v1/recognitions?wait=false",
            files={"files": (photo.name, photo.read_bytes())},
            data={"callback_url": "https://hooks.example.com/iraas"},
            headers=admin(out),
            timeout=30,
        )
        assert r.status_code == 400 and r.json()["error"] == "webhooks_off"
        assert up.poll() is None  # running, not in a restart loop
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(30)
    log = (tmp_path / "up.log").read_text()
    assert f"cannot use the webhook secret {arn}" in log and "secretsmanager:GetSecretValue" in log
    secret = deployer.secrets.get_secret_value(SecretId=arn)["SecretString"]
    assert secret.removeprefix("whsec_") not in log


def test_the_webhook_secret_is_read_from_secrets_manager_and_a_malformed_one_turns_webhooks_off(
    moto: str, caplog: pytest.LogCaptureFixture
) -> None:
    from iraas.config import Settings
    from iraas.parts import with_webhook_secret
    from iraas.signing import new_secret

    sm = boto3_client("secretsmanager", moto)
    good, bad = new_secret(), "whsec_c2hvcnQ="  # 5 bytes: too short to sign with
    arns = [
        sm.create_secret(Name=f"iraas/{n}/webhook-secret", SecretString=v)["ARN"] for n, v in (("a", good), ("b", bad))
    ]
    base = Settings(backend="aws", aws_endpoint_url=moto, aws_region="us-east-1")
    read = with_webhook_secret(replace(base, webhook_secret_arn=arns[0]))
    assert read.webhook_secret == good
    off = with_webhook_secret(replace(base, webhook_secret_arn=arns[1]))
    assert off.webhook_secret == ""  # running, webhooks off
    assert f"cannot use the webhook secret {arns[1]}" in caplog.text and "bytes" in caplog.text
    assert bad not in caplog.text and "c2hvcnQ" not in caplog.text


def _protected(asg: Any) -> dict[str, bool]:
    got = asg.describe_auto_scaling_instances()["AutoScalingInstances"]
    return {i["InstanceId"]: i["ProtectedFromScaleIn"] for i in got if i["AutoScalingGroupName"] == f"{NAME}-workers"}


def _tracked(aws: Aws, target: int, most: int) -> int:
    """What target tracking does with the published metric (moto does not track: the test
    plays it): enough instances to bring the backlog per worker to the target."""
    from iraas.aws.deploy import status

    per_worker = status(aws, NAME)["metrics"]["BacklogPerWorker"] or 0.0
    return min(most, math.ceil(per_worker / target))


def test_an_auto_scaling_group_scales_the_workers_and_busy_ones_protect_themselves(
    moto: str, deployer: Aws, tmp_path: Path, classifier: Classifier
) -> None:
    from iraas.aws.deploy import TEMPLATE
    from iraas.cloudwatch import GAUGES

    out = _deploy(deployer, tmp_path, max_workers=3, scaler="asg", target_per_worker=4)
    asg = boto3_client("autoscaling", moto)
    (group,) = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[f"{NAME}-workers"])["AutoScalingGroups"]
    assert (group["MinSize"], group["MaxSize"], group["LaunchTemplate"]["LaunchTemplateName"]) == (
        0,
        3,
        f"{NAME}-worker",
    )
    tags = {t["Key"]: (t["Value"], t["PropagateAtLaunch"]) for t in group["Tags"]}
    assert tags["iraas:deployment"] == (NAME, True) and tags["iraas:role"] == ("worker", True)
    # the tracking policy, as CloudFormation resolves it (moto makes none): the metric put
    tracking = _template(TEMPLATE)["Resources"]["WorkerScalingPolicy"]["Properties"]["TargetTrackingConfiguration"]
    metric = tracking["CustomizedMetricSpecification"]
    assert (metric["Namespace"], metric["MetricName"], metric["Statistic"]) == ("iraas", "BacklogPerWorker", "Average")
    assert metric["MetricName"] in GAUGES and tracking["TargetValue"] == {"Ref": "TargetPerWorker"}
    iam = boto3_client("iam", moto)
    web, worker = _role(deployer, iam, "ControllerRole"), _role(deployer, iam, "WorkerRole")
    flags = ["--scaler", "external", "--metrics-every-s", "1"]  # as the stack's user data sets them
    up, url = _up(moto, tmp_path, out["Bucket"], web.env, flags)
    files = sorted((IMAGENET / "images").iterdir())[400:424]
    try:
        with Hypervisor(
            deployer, moto, out["Bucket"], tmp_path, worker.env, ["--autoscaling-group", group["AutoScalingGroupName"]]
        ) as hv:
            sent = [
                httpx.post(
                    url + "/v1/recognitions?wait=false", files={"files": (f.name, f.read_bytes())}, headers=admin(out)
                ).json()[0]["id"]
                for f in files
            ]
            _wait(lambda: _tracked(deployer, 4, 3) == 3, 60, "24 waiting over 0 workers: tracking wants all 3")
            asg.set_desired_capacity(AutoScalingGroupName=group["AutoScalingGroupName"], DesiredCapacity=3)
            _wait(lambda: any(_protected(asg).values()), 120, "a busy worker protected from scale-in")
            results = [_result(url, rid, admin(out)) for rid in sent]
            expected = [p.label for p in classifier.predict([f.read_bytes() for f in files])]
            assert [r["label"] for r in results] == expected
            assert {r["worker"] for r in results} <= hv.launched  # the group's instances answered
            _wait(lambda: not any(_protected(asg).values()), 60, "idle workers released for scale-in")
            _wait(lambda: _tracked(deployer, 4, 3) == 0, 60, "nothing waits: tracking wants none")
            asg.set_desired_capacity(AutoScalingGroupName=group["AutoScalingGroupName"], DesiredCapacity=0)
            _wait(lambda: not [s for s in hv.workers().values() if s in ("pending", "running")], 60, "scaled in")
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(30)
    web_calls = iampolicy.load_calls([tmp_path / "up.calls.jsonl"])
    assert not [c for c in web_calls if c["operation"] in ("RunInstances", "TerminateInstances")]  # the group's job
    worker_logs = sorted(tmp_path.glob("i-*.calls.jsonl"))
    protections = [c for c in iampolicy.load_calls(worker_logs) if c["operation"] == "SetInstanceProtection"]
    assert {c["params"]["ProtectedFromScaleIn"] for c in protections} == {True, False}
    _judge(deployer, out, {"web": (web, [tmp_path / "up.calls.jsonl"]), "worker": (worker, worker_logs)})
    assert destroy(deployer, NAME)
    assert not asg.describe_auto_scaling_groups(AutoScalingGroupNames=[f"{NAME}-workers"])["AutoScalingGroups"]


def _result(url: str, rid: str, auth: dict[str, str]) -> dict[str, Any]:
    got: dict[str, Any] = {}

    def final() -> bool:
        got.update(httpx.get(f"{url}/v1/recognitions/{rid}", headers=auth).json())
        return got["status"] in ("done", "failed")

    _wait(final, 120, f"the result of {rid}")
    return got
