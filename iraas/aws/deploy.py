"""`iraas aws deploy | status | destroy`: one CloudFormation stack per deployment.

deploy: create or update the stack from `iraas.yaml` (beside this file; `infra/aws/` links to
it), then upload the wheel of this very iraas version and its dependency lock to the stack's
bucket, where the instances' user-data installs them from — both pinned by SHA-256 in the
launch templates, and writable by the deploying identity alone. destroy: empty the bucket,
terminate every instance tagged with the deployment, delete the reply queues the web processes
made, delete the stack.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from ..awsapi import client, error_code, stack_name, stack_outputs
from ..cloudwatch import latest
from ..fleet.ec2 import DEPLOYMENT_TAG
from .lock import build_lock, sha256

log = logging.getLogger(__name__)
TEMPLATE = Path(__file__).with_name("iraas.yaml")


@dataclass(frozen=True)
class Aws:
    cfn: Any
    ec2: Any
    s3: Any
    sqs: Any
    sts: Any
    secrets: Any  # Secrets Manager: the webhook secret
    cloudwatch: Any  # the controller's figures, for `status`
    region: str | None = None
    endpoint_url: str | None = None

    @classmethod
    def connect(cls, region: str | None = None, endpoint_url: str | None = None) -> Aws:
        def connect(name: str) -> Any:
            return client(name, region, endpoint_url)

        return cls(
            cfn=connect("cloudformation"),
            ec2=connect("ec2"),
            s3=connect("s3"),
            sqs=connect("sqs"),
            sts=connect("sts"),
            secrets=connect("secretsmanager"),
            cloudwatch=connect("cloudwatch"),
            region=region,
            endpoint_url=endpoint_url,
        )

    def caller_arn(self) -> str:
        """Who deploys, as IAM policies name it (aws:PrincipalArn): an assumed role's session
        ARN becomes its role's ARN."""
        arn = str(self.sts.get_caller_identity()["Arn"])
        if ":assumed-role/" in arn:
            head, path = arn.split(":assumed-role/", 1)
            return head.replace(":sts:", ":iam:") + ":role/" + path.rsplit("/", 1)[0]
        return arn


def outputs(aws: Aws, name: str) -> dict[str, str]:
    return stack_outputs(aws.cfn, name)


def build_wheel(out: Path) -> Path:
    """The wheel of the source tree this iraas runs from (an editable or source install)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise RuntimeError("deploy from a source checkout of iraas, or pass --wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(root)],
        check=True,
    )
    return next(out.glob("iraas-*.whl"))


def deploy(
    aws: Aws,
    name: str,
    wheel: Path | None = None,
    *,
    lock: Path | None = None,
    model: str = "efficientnet-lite0",
    gallery: str = "",
    min_workers: int = 0,
    max_workers: int = 20,
    warm_pool: int = 0,
    scaler: str = "controller",
    target_per_worker: int = 8,
    instance_type: str | None = None,
    ami: str | None = None,
    web_port: int = 8000,
    allowed_cidr: str,
    certificate_arn: str = "",
    admin_key: str | None = None,
) -> dict[str, str]:
    """`lock`: a lock file made before (iraas.aws.lock's format), else one is resolved now
    (this needs the package index). `gallery`: model "faces", enrolled here and stored for
    the workers. `allowed_cidr`: who may reach the service (no default: an open one must be
    chosen). `certificate_arn`: an ACM certificate; then an HTTPS load balancer is the only
    way in. The first deploy creates the admin key (`admin_key`, or a new one), returned
    once as "AdminKey". `warm_pool`: scaled-in workers kept stopped, to start in seconds.
    `scaler` "asg": the workers in an EC2 Auto Scaling group tracking `target_per_worker`
    (backlog per worker), the controller keeping only the duties."""
    if scaler == "asg" and warm_pool:
        raise ValueError("--warm-pool is the controller's: an Auto Scaling group scales in by itself (--scaler asg)")
    with tempfile.TemporaryDirectory() as tmp:
        wheel = wheel or build_wheel(Path(tmp))
        lock_text = lock.read_text() if lock else build_lock(wheel)
        lock_sha = hashlib.sha256(lock_text.encode()).hexdigest()
        key, lock_key = f"dist/{wheel.name}", f"dist/requirements-{lock_sha[:16]}.lock"
        params = {
            "DeploymentName": name,
            "MinWorkers": str(min_workers),
            "MaxWorkers": str(max_workers),
            "WarmPool": str(warm_pool),
            "Scaler": scaler,
            "TargetPerWorker": str(target_per_worker),
            "WheelKey": key,
            "WheelSha256": sha256(wheel),
            "LockKey": lock_key,
            "LockSha256": lock_sha,
            "DeployerArn": aws.caller_arn(),
            "Model": model,
            "WebPort": str(web_port),
            "AllowedCidr": allowed_cidr,
            "CertificateArn": certificate_arn,
            "WebhookSecretArn": _webhook_secret(aws, name),
        }
        vpc, subnets = _default_subnets(aws) if certificate_arn else ("", [])
        params |= {"LoadBalancerVpc": vpc, "LoadBalancerSubnets": ",".join(subnets)}
        if instance_type:
            params["InstanceType"] = instance_type
        if ami:
            params["WorkerAmi"] = ami
        _create_or_update(aws, name, params)
        out = outputs(aws, name)
        aws.s3.upload_file(str(wheel), out["Bucket"], key)
        aws.s3.put_object(Bucket=out["Bucket"], Key=lock_key, Body=lock_text.encode())
    if gallery:
        _publish_gallery(aws, name, out["Bucket"], model, gallery)
    created = _admin_key(aws, out["Bucket"], admin_key)
    log.info("deployed %s: %s", name, out.get("Url"))
    return out | ({"AdminKey": created} if created else {})


def _admin_key(aws: Aws, bucket: str, given: str | None) -> str | None:
    """The deployment's first admin key, named "admin": made (or taken from `given`) on the
    first deploy; None when one exists (a key is shown once, never again)."""
    from ..access.keys import KeyRing
    from ..blobs.s3 import S3BlobStore

    ring = KeyRing(S3BlobStore(aws.s3, bucket))
    if any(k.name == "admin" and k.active for k in ring.all()):
        return None
    return ring.create("admin", "admin", token=given)


def webhook_secret_name(name: str) -> str:
    return f"iraas/{name}/webhook-secret"


def _webhook_secret(aws: Aws, name: str) -> str:
    """The ARN of the deployment's webhook secret in Secrets Manager, made on the first deploy
    (a new `whsec_…`, never printed: read it with `aws secretsmanager get-secret-value`). Only
    the web and controller's role may read it; it never enters the stack, user data or disk."""
    from ..signing import new_secret

    try:
        return str(aws.secrets.describe_secret(SecretId=webhook_secret_name(name))["ARN"])
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
    made = aws.secrets.create_secret(
        Name=webhook_secret_name(name),
        Description=f"iraas {name}: signs its webhooks (Standard Webhooks whsec_ secret)",
        SecretString=new_secret(),
        Tags=[{"Key": "iraas:deployment", "Value": name}],
    )
    return str(made["ARN"])


def _default_subnets(aws: Aws) -> tuple[str, list[str]]:
    """The default VPC (where the web instance runs) and its default subnets, one per zone:
    where the load balancer goes."""
    found = aws.ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    if len({s["AvailabilityZone"] for s in found}) < 2:
        raise ValueError("an HTTPS load balancer needs default subnets in two zones; this account has fewer")
    return found[0]["VpcId"], [s["SubnetId"] for s in sorted(found, key=lambda s: s["AvailabilityZone"])]


def _publish_gallery(aws: Aws, name: str, bucket: str, model: str, gallery: str) -> None:
    from ..config import Settings
    from ..faces.gallery import publish_if_given
    from ..parts import build

    settings = Settings(
        backend="aws",
        name=name,
        bucket=bucket,
        model=model,
        gallery=gallery,
        aws_region=aws.region or "",
        aws_endpoint_url=aws.endpoint_url or "",
    )
    publish_if_given(model, gallery, build(settings).gallery)


def _create_or_update(aws: Aws, name: str, params: dict[str, str]) -> None:
    args = {
        "StackName": stack_name(name),
        "TemplateBody": TEMPLATE.read_text(),
        "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        "Capabilities": ["CAPABILITY_IAM"],
        "Tags": [{"Key": DEPLOYMENT_TAG, "Value": name}],
    }
    try:
        aws.cfn.describe_stacks(StackName=stack_name(name))
        exists = True
    except ClientError:
        exists = False
    if not exists:
        aws.cfn.create_stack(**args)
        aws.cfn.get_waiter("stack_create_complete").wait(StackName=stack_name(name))
        return
    try:
        aws.cfn.update_stack(**args)
    except ClientError as exc:
        if "No updates are to be performed" in str(exc):
            return
        raise
    aws.cfn.get_waiter("stack_update_complete").wait(StackName=stack_name(name))


def _instances(aws: Aws, name: str, states: list[str]) -> list[dict[str, Any]]:
    filters = [{"Name": f"tag:{DEPLOYMENT_TAG}", "Values": [name]}, {"Name": "instance-state-name", "Values": states}]
    found = []
    for page in aws.ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for res in page["Reservations"]:
            found.extend(res["Instances"])
    return found


def status(aws: Aws, name: str) -> dict[str, Any]:
    out = outputs(aws, name)
    attrs = aws.sqs.get_queue_attributes(
        QueueUrl=out["RequestsQueueUrl"],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    live = ["pending", "running", "shutting-down", "stopping"]
    instances = [
        {
            "id": i["InstanceId"],
            "state": i["State"]["Name"],
            "role": next((t["Value"] for t in i.get("Tags", []) if t["Key"] == "iraas:role"), "?"),
        }
        for i in _instances(aws, name, live)
    ]
    return {
        "outputs": out,
        "queue": {
            "visible": int(attrs["ApproximateNumberOfMessages"]),
            "in_flight": int(attrs["ApproximateNumberOfMessagesNotVisible"]),
        },
        "instances": instances,
        # the controller's figures as it put them (nothing while metrics_every_s is 0)
        "metrics": latest(aws.cloudwatch, name),
    }


def destroy(aws: Aws, name: str, wait_s: float = 600) -> list[str]:
    """Remove everything the deployment made; returns what was removed, for the user."""
    removed: list[str] = []
    try:
        bucket = outputs(aws, name).get("Bucket")
    except ClientError:
        bucket = None
    if bucket:
        n = _empty_bucket(aws, bucket)
        removed.append(f"{n} object(s) from bucket {bucket}")
    live = _instances(aws, name, ["pending", "running", "stopping", "stopped"])
    if live:
        ids = [i["InstanceId"] for i in live]
        aws.ec2.terminate_instances(InstanceIds=ids)
        removed.append(f"instances {', '.join(ids)}")
    replies = aws.sqs.list_queues(QueueNamePrefix=f"{name}-replies-").get("QueueUrls", [])
    for url in replies:
        aws.sqs.delete_queue(QueueUrl=url)
        removed.append(f"reply queue {url.rsplit('/', 1)[-1]}")
    try:
        aws.cfn.delete_stack(StackName=stack_name(name))
        aws.cfn.get_waiter("stack_delete_complete").wait(
            StackName=stack_name(name), WaiterConfig={"Delay": 5, "MaxAttempts": max(int(wait_s / 5), 1)}
        )
        removed.append(
            f"stack {stack_name(name)} (queues, bucket, roles, security groups, launch templates, web instance)"
        )
    except WaiterError as exc:
        raise RuntimeError(f"stack {stack_name(name)} was not deleted in {wait_s:.0f} s: {exc}") from exc
    try:
        aws.secrets.delete_secret(SecretId=webhook_secret_name(name), ForceDeleteWithoutRecovery=True)
        removed.append(f"secret {webhook_secret_name(name)}")
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
    return removed


def _empty_bucket(aws: Aws, bucket: str) -> int:
    count = 0
    for page in aws.s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        objects = [
            {"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
        ]
        for i in range(0, len(objects), 1000):
            aws.s3.delete_objects(Bucket=bucket, Delete={"Objects": objects[i : i + 1000], "Quiet": True})
            count += len(objects[i : i + 1000])
    return count
