"""The CloudFormation template: lint, least privilege, and what it creates in moto."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode

from iraas.aws.deploy import TEMPLATE, Aws, deploy, destroy, outputs

ROOT = Path(__file__).resolve().parents[1]


def _statements(template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    policies = template["Resources"][role]["Properties"]["Policies"]
    return [s for p in policies for s in p["PolicyDocument"]["Statement"]]


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


def test_worker_role_is_least_privilege(template: dict[str, Any]) -> None:
    allowed = {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
        "sqs:GetQueueUrl",
        "sqs:SendMessage",
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:ListBucket",
    }
    statements = _statements(template, "WorkerRole")
    for stmt in statements:
        assert set(_actions(stmt)) <= allowed, stmt
        assert stmt["Resource"] != "*" and "*" not in _actions(stmt)
    by_sid = {s["Sid"]: s for s in statements}
    assert by_sid["TakeRequests"]["Resource"] == {"Fn::GetAtt": ["RequestsQueue", "Arn"]}
    assert by_sid["SendReplies"]["Resource"]["Fn::Sub"].endswith(":${DeploymentName}-replies-*")
    puts = [r["Fn::Sub"] for r in by_sid["WriteResultsAndHeartbeats"]["Resource"]]
    assert puts == [
        "${Bucket.Arn}/results/*",
        "${Bucket.Arn}/dedup/*",
        "${Bucket.Arn}/heartbeats/*",
        "${Bucket.Arn}/gallery/enrolments/*",  # faces: enrolment is a worker job
        "${Bucket.Arn}/gallery/faces.version",
    ]
    # listing only the enrolments (a face worker merges them into the gallery)
    assert by_sid["ListEnrolments"]["Condition"] == {"StringLike": {"s3:prefix": "gallery/enrolments/*"}}
    assert by_sid["RemoveOwnHeartbeat"]["Resource"]["Fn::Sub"] == "${Bucket.Arn}/heartbeats/*"


def test_controller_role_runs_tags_terminates_and_passes_only_its_own(template: dict[str, Any]) -> None:
    statements = _statements(template, "ControllerRole")
    for stmt in statements:
        assert not any(a.endswith(":*") or a == "*" for a in _actions(stmt)), stmt
        if stmt["Resource"] == "*":
            assert _actions(stmt) == ["ec2:DescribeInstances"]  # supports no resource-level permission
    by_sid = {s["Sid"]: s for s in statements}
    run_tagged = by_sid["RunOnlyTaggedWorkers"]
    assert run_tagged["Condition"]["StringEquals"] == {"aws:RequestTag/iraas:deployment": {"Ref": "DeploymentName"}}
    assert (
        "launch-template/${WorkerLaunchTemplate}" in run_tagged["Condition"]["ArnLike"]["ec2:LaunchTemplate"]["Fn::Sub"]
    )
    assert "launch-template/${WorkerLaunchTemplate}" in by_sid["RunFromTheWorkerTemplate"]["Resource"]["Fn::Sub"]
    others = by_sid["RunWithTheTemplatesResources"]
    assert "ec2:LaunchTemplate" in others["Condition"]["ArnLike"]
    terminate = by_sid["TerminateOnlyThisDeployment"]
    assert terminate["Condition"]["StringEquals"] == {"aws:ResourceTag/iraas:deployment": {"Ref": "DeploymentName"}}
    pass_role = by_sid["PassOnlyTheWorkerRole"]
    assert pass_role["Resource"] == {"Fn::GetAtt": ["WorkerRole", "Arn"]}
    assert pass_role["Condition"]["StringEquals"] == {"iam:PassedToService": "ec2.amazonaws.com"}
    assert by_sid["TagAtLaunchOnly"]["Condition"]["StringEquals"] == {"ec2:CreateAction": "RunInstances"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from iraas.aws.deploy import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_stack_deploys_into_moto_with_the_expected_properties(moto: str, wheel: Path) -> None:
    aws = Aws.connect("us-east-1", moto)
    out = deploy(aws, "tpl", wheel, max_workers=5)
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
    # the web instance, tagged
    (res,) = aws.ec2.describe_instances(Filters=[{"Name": "tag:iraas:deployment", "Values": ["tpl"]}])["Reservations"]
    tags = {t["Key"]: t["Value"] for t in res["Instances"][0]["Tags"]}
    assert tags["iraas:role"] == "web"
    assert outputs(aws, "tpl")["WorkerLaunchTemplate"] == "tpl-worker"
    removed = destroy(aws, "tpl")
    assert any("stack iraas-tpl" in r for r in removed)


def test_bucket_retention_matches_the_embedded_defaults(template: dict[str, Any]) -> None:
    from iraas.config import Settings

    rules = template["Resources"]["Bucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    days = {r["Prefix"]: r["ExpirationInDays"] for r in rules if r["Status"] == "Enabled"}
    s = Settings()
    assert days == {
        "inputs/": s.input_ttl_s / 86_400,
        "results/": s.result_ttl_s / 86_400,
        "dedup/": s.result_ttl_s / 86_400,
    }
