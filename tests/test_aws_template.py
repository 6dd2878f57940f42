"""The CloudFormation template: lint, least privilege, and what it creates in moto."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode

from iraas.access.keys import KeyRing
from iraas.access.quota import USAGE, USAGE_RETENTION_S
from iraas.aws.deploy import TEMPLATE, Aws, deploy, destroy, outputs
from iraas.aws.lock import sha256
from iraas.blobs.s3 import S3BlobStore

from .test_aws_e2e import boto3_client

ROOT = Path(__file__).resolve().parents[1]


def _statements(template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    """Every statement a role may have (one under `Fn::If`: its statement when the condition holds)."""
    policies = template["Resources"][role]["Properties"]["Policies"]
    found = [s for p in policies for s in p["PolicyDocument"]["Statement"]]
    return [s["Fn::If"][1] if "Fn::If" in s else s for s in found]


def _actions(stmt: dict[str, Any]) -> list[str]:
    action = stmt["Action"]
    return [action] if isinstance(action, str) else list(action)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    decoded, matches = decode(str(TEMPLATE))
    assert not matches and decoded is not None
    return dict(decoded)


def test_template_in_repo_passes_cfn_lint() -> None:
    assert (ROOT / "infra" / "aws" / "iraas.yaml").resolve() == TEMPLATE.resolve()
    proc = subprocess.run(
        [Path(sys.executable).with_name("cfn-lint"), str(ROOT / "infra" / "aws" / "iraas.yaml")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bucket_is_private_encrypted_and_expires_inputs(template: dict[str, Any]) -> None:
    # Checked here on the template: moto's CloudFormation applies neither the public access
    # block nor the lifecycle rule (the deploy test below sees the encryption applied).
    props = template["Resources"]["Bucket"]["Properties"]
    block = props["PublicAccessBlockConfiguration"]
    assert block == {
        k: True for k in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")
    }
    assert props["LifecycleConfiguration"]["Rules"][0]["Prefix"] == "inputs/"


def _subs(resource: Any) -> list[str]:
    items = resource if isinstance(resource, list) else [resource]
    return [r["Fn::Sub"] if isinstance(r, dict) and "Fn::Sub" in r else json.dumps(r) for r in items]


# What each role may do is proven by running under it (tests/test_aws_e2e.py, IAM enforced and
# every call evaluated); these check what that run cannot reach.


def test_no_role_may_write_the_code_instances_install(template: dict[str, Any]) -> None:
    for role in ("WorkerRole", "ControllerRole"):
        for stmt in _statements(template, role):
            writes = {"s3:PutObject", "s3:DeleteObject", "s3:*", "*"} & set(_actions(stmt))
            if writes:
                assert not [r for r in _subs(stmt["Resource"]) if "dist/" in r or r == "${Bucket.Arn}/*"], stmt
    (deny,) = template["Resources"]["BucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*"
    assert set(deny["Action"]) == {"s3:PutObject", "s3:DeleteObject"}
    assert deny["Resource"] == {"Fn::Sub": "${Bucket.Arn}/dist/*"}
    assert deny["Condition"] == {"ArnNotEquals": {"aws:PrincipalArn": {"Ref": "DeployerArn"}}}


def test_run_instances_cannot_override_what_the_launch_template_fixes(template: dict[str, Any]) -> None:
    by_sid = {s["Sid"]: s for s in _statements(template, "ControllerRole")}
    instance = by_sid["RunOnlyTaggedWorkers"]["Condition"]
    assert instance["StringEquals"]["ec2:InstanceType"] == {"Ref": "InstanceType"}
    assert instance["StringEquals"]["ec2:MetadataHttpTokens"] == "required"
    assert instance["StringEquals"]["aws:RequestTag/iraas:deployment"] == {"Ref": "DeploymentName"}
    assert instance["ArnEquals"]["ec2:InstanceProfile"] == {"Fn::GetAtt": ["WorkerInstanceProfile", "Arn"]}
    image = by_sid["RunTheTemplatesImageAndGroup"]
    assert image["Condition"]["Bool"] == {"ec2:IsLaunchTemplateResource": "true"}
    assert any("image/*" in r for r in _subs(image["Resource"]))
    assert any("security-group/${WorkerSecurityGroup.GroupId}" in r for r in _subs(image["Resource"]))
    for stmt in by_sid.values():  # every RunInstances grant is tied to the worker launch template
        if "ec2:RunInstances" in _actions(stmt) and stmt["Sid"] != "RunFromTheWorkerTemplate":
            assert (
                "launch-template/${WorkerLaunchTemplate}"
                in stmt["Condition"]["ArnLike"]["ec2:LaunchTemplate"]["Fn::Sub"]
            )
    pass_role = by_sid["PassOnlyTheWorkerRole"]
    assert pass_role["Resource"] == {"Fn::GetAtt": ["WorkerRole", "Arn"]}


def test_requests_are_kept_14_days(template: dict[str, Any]) -> None:
    assert template["Resources"]["RequestsQueue"]["Properties"]["MessageRetentionPeriod"] == 14 * 86_400


def _user_data(template: dict[str, Any], launch_template: str) -> str:
    data = template["Resources"][launch_template]["Properties"]["LaunchTemplateData"]
    sub = data["UserData"]["Fn::Base64"]["Fn::Sub"]
    return str(sub[0] if isinstance(sub, list) else sub)  # [text, variables] or text


def test_worker_and_web_install_the_deployed_version_the_same_checked_way(template: dict[str, Any]) -> None:
    # CloudFormation has no way to share text between two user-data scripts: the install is
    # written twice and must not drift.
    def install(text: str) -> str:
        return text.split("set -u\n", 1)[1].split('refuse "a package does not match its hash in the lock"', 1)[0]

    worker, web = _user_data(template, "WorkerLaunchTemplate"), _user_data(template, "WebLaunchTemplate")
    assert install(worker) == install(web)
    assert "sha256sum -c" in install(worker) and "--require-hashes --no-deps" in install(worker)


def test_web_instance_runs_iraas_under_systemd_as_an_unprivileged_user(template: dict[str, Any]) -> None:
    text = _user_data(template, "WebLaunchTemplate")
    unit = text.split("cat > /etc/systemd/system/iraas.service <<EOF\n", 1)[1].split("\nEOF\n", 1)[0]
    section = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in unit.splitlines() if "=" in line}
    assert section["User"] == "iraas" and section["Group"] == "iraas"
    assert section["Restart"] == "always" and section["WantedBy"] == "multi-user.target"
    assert section["ExecStart"] == "/opt/iraas/venv/bin/iraas up"
    assert section["NoNewPrivileges"] == "yes" and section["ProtectSystem"] == "strict"
    assert "useradd --system" in text and "systemctl enable --now iraas.service" in text
    assert "/opt/iraas/venv/bin/iraas up" not in text.replace(section["ExecStart"], "", 1)  # never run as root


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from iraas.aws.deploy import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_stack_deploys_into_moto_with_the_expected_properties(moto: str, wheel: Path) -> None:
    aws = Aws.connect("us-east-1", moto)
    out = deploy(aws, "tpl", wheel, max_workers=5, allowed_cidr="203.0.113.0/24")
    # the first admin key: returned once, stored as a hash only; a redeploy makes no other
    key = out.pop("AdminKey")
    found = KeyRing(S3BlobStore(aws.s3, out["Bucket"])).find(key)
    assert found is not None and (found.name, found.scope) == ("admin", "admin")
    stored = [o["Key"] for o in aws.s3.list_objects_v2(Bucket=out["Bucket"], Prefix="keys/")["Contents"]]
    assert not any(key in k for k in stored)
    assert "AdminKey" not in deploy(aws, "tpl", wheel, max_workers=5, allowed_cidr="203.0.113.0/24")
    # the web port is open to the allowed network alone; no load balancer without a certificate
    (web_sg,) = aws.ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["*WebSecurityGroup*"]}])[
        "SecurityGroups"
    ]
    assert [r["CidrIp"] for p in web_sg["IpPermissions"] for r in p["IpRanges"]] == ["203.0.113.0/24"]
    assert out["Url"].startswith("http://")
    # the queue and its dead-letter queue, with redrive after 3 receives
    url = aws.sqs.get_queue_url(QueueName="tpl-requests")["QueueUrl"]
    attrs = aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attrs["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"].endswith(":tpl-requests-dlq") and int(redrive["maxReceiveCount"]) == 3
    # the bucket: encrypted; the wheel of this version is in it
    bucket = out["Bucket"]
    enc = aws.s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert enc["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert aws.s3.head_object(Bucket=bucket, Key=f"dist/{wheel.name}")["ContentLength"] == wheel.stat().st_size
    # the worker launch template: IMDSv2, terminate on shutdown, user-data installs that wheel
    versions = aws.ec2.describe_launch_template_versions(LaunchTemplateName="tpl-worker")["LaunchTemplateVersions"]
    data = versions[0]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["InstanceInitiatedShutdownBehavior"] == "terminate"
    user_data = base64.b64decode(data["UserData"]).decode()
    assert f"s3://{bucket}/dist/{wheel.name}" in user_data and "iraas worker" in user_data
    # ...only that wheel, by its SHA-256, and its dependencies from a lock with hashes made now
    assert f"{sha256(wheel)}  /opt/iraas/dist/{wheel.name}" in user_data
    (lock_key,) = [
        o["Key"]
        for o in aws.s3.list_objects_v2(Bucket=bucket, Prefix="dist/")["Contents"]
        if o["Key"].endswith(".lock")
    ]
    lock = aws.s3.get_object(Bucket=bucket, Key=lock_key)["Body"].read()
    assert f"{hashlib.sha256(lock).hexdigest()}  /opt/iraas/dist/requirements.lock" in user_data
    assert "--require-hashes --no-deps -r /opt/iraas/dist/requirements.lock" in user_data
    pins = [line for line in lock.decode().splitlines() if not line.startswith("#")]
    names = {line.split("==")[0].split(" @ ")[0].lower().replace("_", "-") for line in pins}
    assert {"numpy", "onnxruntime", "boto3", "fastapi", "uvicorn", "iraas"} <= names
    assert all(" --hash=sha256:" in line for line in pins)
    assert pins[-1] == f"iraas @ file:///opt/iraas/dist/{wheel.name} --hash=sha256:{sha256(wheel)}"
    # the web instance, tagged
    (res,) = aws.ec2.describe_instances(Filters=[{"Name": "tag:iraas:deployment", "Values": ["tpl"]}])["Reservations"]
    tags = {t["Key"]: t["Value"] for t in res["Instances"][0]["Tags"]}
    assert tags["iraas:role"] == "web"
    assert outputs(aws, "tpl")["WorkerLaunchTemplate"] == "tpl-worker"
    removed = destroy(aws, "tpl")
    assert any("stack iraas-tpl" in r for r in removed)


def test_with_a_certificate_an_https_balancer_is_the_only_way_in(moto: str, wheel: Path) -> None:
    aws = Aws.connect("us-east-1", moto)
    acm = boto3_client("acm", moto)
    cert = acm.request_certificate(DomainName="iraas.example.com")["CertificateArn"]
    out = deploy(aws, "tls", wheel, max_workers=1, allowed_cidr="198.51.100.0/24", certificate_arn=cert)
    elb = boto3_client("elbv2", moto)
    (lb,) = elb.describe_load_balancers()["LoadBalancers"]
    assert out["Url"] == f"https://{lb['DNSName']}" and lb["Scheme"] == "internet-facing"
    listeners = {x["Port"]: x for x in elb.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]}
    assert listeners[443]["Protocol"] == "HTTPS" and listeners[443]["Certificates"][0]["CertificateArn"] == cert
    assert listeners[80]["DefaultActions"][0]["Type"] == "redirect"
    groups = {g["GroupId"]: g for g in aws.ec2.describe_security_groups()["SecurityGroups"]}
    (lb_sg,) = lb["SecurityGroups"]
    assert {r["CidrIp"] for p in groups[lb_sg]["IpPermissions"] for r in p["IpRanges"]} == {"198.51.100.0/24"}
    (web_sg,) = [g for g in groups.values() if "WebSecurityGroup" in g["GroupName"]]
    (rule,) = web_sg["IpPermissions"]
    assert rule["IpRanges"] == [] and [p["GroupId"] for p in rule["UserIdGroupPairs"]] == [lb_sg]
    (tg,) = elb.describe_target_groups(LoadBalancerArn=lb["LoadBalancerArn"])["TargetGroups"]
    assert tg["HealthCheckPath"] == "/readyz"
    destroy(aws, "tls")


def test_bucket_retention_matches_the_embedded_defaults(template: dict[str, Any]) -> None:
    from iraas.config import Settings

    rules = template["Resources"]["Bucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    days = {r["Prefix"]: r["ExpirationInDays"] for r in rules if r["Status"] == "Enabled"}
    s = Settings()
    assert days == {
        "inputs/": s.input_ttl_s / 86_400,
        "results/": s.result_ttl_s / 86_400,
        "dedup/": s.result_ttl_s / 86_400,
        "callbacks/": s.result_ttl_s / 86_400,  # a webhook's delivery state, as long as its result
        USAGE: USAGE_RETENTION_S / 86_400,
    }


def test_workers_run_under_systemd_so_a_pooled_instance_works_again_when_started(template: dict[str, Any]) -> None:
    text = _user_data(template, "WorkerLaunchTemplate")
    unit = text.split("cat > /etc/systemd/system/iraas-worker.service <<EOF\n", 1)[1].split("\nEOF\n", 1)[0]
    section = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in unit.splitlines() if "=" in line}
    assert section["ExecStart"] == "/opt/iraas/venv/bin/iraas worker" and section["User"] == "iraas"
    assert section["WantedBy"] == "multi-user.target" and "systemctl enable --now iraas-worker.service" in text
    # a worker ending by itself ends its instance; a machine being stopped into the pool does not
    assert section["ExecStopPost"] == "+/opt/iraas/end-instance"
    assert '[ "$(systemctl is-system-running)" = stopping ] || shutdown -h now' in text
    by_sid = {s["Sid"]: s for s in _statements(template, "ControllerRole")}
    pool = by_sid["WarmPoolOnlyThisDeployment"]
    assert sorted(_actions(pool)) == ["ec2:StartInstances", "ec2:StopInstances"]
    assert pool["Condition"]["StringEquals"] == {
        "aws:ResourceTag/iraas:deployment": {"Ref": "DeploymentName"},
        "aws:ResourceTag/iraas:role": "worker",
    }
    assert template["Parameters"]["WarmPool"]["Default"] == 0


def test_the_controller_may_put_metrics_in_the_iraas_namespace_only(template: dict[str, Any]) -> None:
    from . import iampolicy

    (stmt,) = [s for s in _statements(template, "ControllerRole") if s["Sid"] == "PublishMetrics"]
    policy = {"Version": "2012-10-17", "Statement": [json.loads(json.dumps(stmt))]}
    principal = "arn:aws:sts::123456789012:assumed-role/web/i-0"
    asks = [
        (principal, "p", iampolicy.Auth("cloudwatch:PutMetricData", "*", (("cloudwatch:namespace", ns),)))
        for ns in ("iraas", "AWS/EC2", "other")
    ]
    decisions = iampolicy.evaluate({"p": policy}, asks, account="123456789012")
    assert [d.allowed for d in decisions] == [True, False, False]
    for role in ("WorkerRole", "ControllerRole"):  # nothing else of CloudWatch, for either role
        others = [s for s in _statements(template, role) if any(a.startswith("cloudwatch:") for a in _actions(s))]
        assert [s["Sid"] for s in others] == (["PublishMetrics"] if role == "ControllerRole" else [])
