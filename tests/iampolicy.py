"""Judge recorded AWS calls (tests/awscalls.py) against the deployed template's IAM policies.

moto enforces IAM only in part: it matches actions and S3/SQS resources, but treats any
statement with a Condition as a deny, passes "*" as the resource of every EC2 call, never checks
iam:PassRole, and answers 404 for a missing S3 key whoever asks. So the processes run under a
*projection* of each role's policy that moto can enforce (statements it cannot evaluate are
widened to Resource "*" without conditions), and every call they made is then evaluated
against the role's exact policy by a real policy evaluator (iam-simulate, tests/iam/), with the
authorization requests AWS makes for that call — including S3's rule that a GET of a missing
key is answered 403, not 404, unless the caller may s3:ListBucket that key as prefix.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EVALUATOR = Path(__file__).with_name("iam") / "evaluate.mjs"
_MOTO_EXACT = {"s3", "sqs"}  # services whose resource ARNs moto passes to its policy check
_MOTO_BLIND = {"sqs:GetQueueUrl", "sqs:CreateQueue", "sqs:ListQueues"}  # ...but not for these (no QueueUrl)
# moto names CloudWatch's actions monitoring:* (its endpoint's prefix), IAM cloudwatch:*; and it
# names the batch calls as actions of their own; IAM (and the template) authorizes them as these
_MOTO_BATCH = {a: a + "Batch" for a in ("sqs:SendMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility")}


@dataclass(frozen=True)
class Auth:
    """One authorization request: what AWS checks, and the call it comes from."""

    action: str
    resource: str
    context: tuple[tuple[str, str | tuple[str, ...]], ...] = ()
    why: str = ""


@dataclass(frozen=True)
class Deployment:
    """What turning calls into authorization requests needs to know about the stack."""

    account: str
    region: str
    worker_role_arn: str
    template_arn: str
    template: dict[str, Any]  # the worker launch template's data
    instance_tags: dict[str, dict[str, str]] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)  # Auto Scaling group name: its ARN


def load_calls(paths: Iterable[Path]) -> list[dict[str, Any]]:
    calls = []
    for path in paths:
        calls.extend(json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return calls


def authorizations(call: dict[str, Any], dep: Deployment) -> list[Auth]:
    service, op, p = call["service"], call["operation"], call["params"]
    why = f"{op} {_what(p)} -> {call['status']} {call['error']}".strip()
    if service == "s3":
        return _s3(op, p, call["status"], dep, why)
    if service == "sqs":
        return _sqs(op, p, dep, why)
    if service == "ec2":
        return _ec2(op, p, dep, why)
    if service in ("cloudwatch", "monitoring") and op == "PutMetricData":  # (boto names it by its endpoint)
        return [Auth("cloudwatch:PutMetricData", "*", (("cloudwatch:namespace", str(p["Namespace"])),), why=why)]
    if service == "autoscaling" and op == "SetInstanceProtection":  # on the group, by its ARN
        return [Auth("autoscaling:SetInstanceProtection", dep.groups[str(p["AutoScalingGroupName"])], why=why)]
    if service == "secretsmanager" and op == "GetSecretValue":  # SecretId: the ARN deploy passes
        return [Auth("secretsmanager:GetSecretValue", str(p["SecretId"]), why=why)]
    raise AssertionError(f"no IAM model for {service}:{op} ({why}): add one to tests/iampolicy.py")


def _what(p: dict[str, Any]) -> str:
    keys = (
        "Key",
        "Prefix",
        "QueueUrl",
        "QueueName",
        "InstanceIds",
        "LaunchTemplate",
        "Namespace",
        "AutoScalingGroupName",
    )
    for key in keys:
        if key in p:
            return f"{key}={p[key]}"
    return ""


def _s3(op: str, p: dict[str, Any], status: int, dep: Deployment, why: str) -> list[Auth]:
    bucket = f"arn:aws:s3:::{p['Bucket']}"
    if op in ("GetObject", "HeadObject"):
        auths = [Auth("s3:GetObject", f"{bucket}/{p['Key']}", why=why)]
        if status == 404:  # AWS answers 404 only to a caller that may list the key
            auths.append(Auth("s3:ListBucket", bucket, (("s3:prefix", p["Key"]),), why=why + " (404, not 403)"))
        return auths
    if op == "PutObject":
        return [Auth("s3:PutObject", f"{bucket}/{p['Key']}", why=why)]
    if op == "DeleteObject":
        return [Auth("s3:DeleteObject", f"{bucket}/{p['Key']}", why=why)]
    if op == "DeleteObjects":
        return [Auth("s3:DeleteObject", f"{bucket}/{k}", why=why) for k in p["Keys"]]
    if op in ("ListObjectsV2", "ListObjects"):
        ctx = (("s3:prefix", p["Prefix"]),) if p.get("Prefix") else ()
        return [Auth("s3:ListBucket", bucket, ctx, why=why)]
    raise AssertionError(f"no IAM model for s3:{op}")


_SQS = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}


def _sqs(op: str, p: dict[str, Any], dep: Deployment, why: str) -> list[Auth]:
    if op == "ListQueues":
        return [Auth("sqs:ListQueues", "*", why=why)]
    name = str(p.get("QueueUrl") or p["QueueName"]).rsplit("/", 1)[-1]
    arn = f"arn:aws:sqs:{dep.region}:{dep.account}:{name}"
    return [Auth(f"sqs:{_SQS.get(op, op)}", arn, why=why)]


def _ec2_arn(dep: Deployment, kind: str, rid: str) -> str:
    return f"arn:aws:ec2:{dep.region}:{dep.account}:{kind}/{rid}"


def _ec2(op: str, p: dict[str, Any], dep: Deployment, why: str) -> list[Auth]:
    if op == "DescribeInstances":
        return [Auth("ec2:DescribeInstances", "*", why=why)]
    if op == "TerminateInstances":
        auths = []
        for iid in p["InstanceIds"]:
            tags = dep.instance_tags.get(iid, {})
            ctx = tuple((f"{scope}:ResourceTag/{k}", v) for k, v in tags.items() for scope in ("aws", "ec2"))
            auths.append(Auth("ec2:TerminateInstances", _ec2_arn(dep, "instance", iid), ctx, why=why))
        return auths
    if op == "RunInstances":
        return _run_instances(p, dep, why)
    raise AssertionError(f"no IAM model for ec2:{op}")


# The ids of what RunInstances creates, unknown when AWS authorizes it; a concrete stand-in keeps
# the evaluator judging one resource, as AWS does, rather than a wildcard.
NEW = {"instance": "i-0new", "network-interface": "eni-0new", "volume": "vol-0new"}
_NOT_FROM_TEMPLATE = ("ec2:IsLaunchTemplateResource", "false")


def _run_instances(p: dict[str, Any], dep: Deployment, why: str) -> list[Auth]:
    """The requests AWS authorizes for one RunInstances from a launch template: every resource
    it uses or creates, the role it passes, and the tags it creates."""
    t = dep.template
    from_template = "LaunchTemplate" in p
    lt = (("ec2:LaunchTemplate", dep.template_arn),) if from_template else ()

    def own(param: str) -> tuple[tuple[str, str], ...]:
        # "true" when the resource comes from the template, not from the caller's override
        return (("ec2:IsLaunchTemplateResource", "false" if param in p or not from_template else "true"),)

    tags = {t_["Key"]: t_["Value"] for spec in p.get("TagSpecifications", []) for t_ in spec["Tags"]}
    request_tags = tuple((f"aws:RequestTag/{k}", v) for k, v in tags.items())
    tag_keys = (("aws:TagKeys", tuple(tags)),) if tags else ()
    profile = p.get("IamInstanceProfile", {}).get("Arn") or t["IamInstanceProfile"]["Arn"]
    instance_ctx = (
        *lt,
        *request_tags,
        *tag_keys,
        ("ec2:InstanceType", p.get("InstanceType", t["InstanceType"])),
        ("ec2:InstanceProfile", profile),
        ("ec2:MetadataHttpTokens", t["MetadataOptions"]["HttpTokens"]),
    )
    run = "ec2:RunInstances"
    auths = [
        Auth(run, _ec2_arn(dep, "instance", NEW["instance"]), instance_ctx, why=why),
        Auth(run, _ec2_arn(dep, "launch-template", dep.template_arn.rsplit("/", 1)[-1]), (*lt, *own("")), why=why),
        Auth(run, f"arn:aws:ec2:{dep.region}::image/{p.get('ImageId', t['ImageId'])}", (*lt, *own("ImageId")), why),
        Auth(run, _ec2_arn(dep, "subnet", "subnet-default"), (*lt, _NOT_FROM_TEMPLATE), why),
        Auth(run, _ec2_arn(dep, "network-interface", NEW["network-interface"]), (*lt, _NOT_FROM_TEMPLATE), why),
        Auth(run, _ec2_arn(dep, "volume", NEW["volume"]), (*lt, _NOT_FROM_TEMPLATE), why=why),
        Auth("iam:PassRole", dep.worker_role_arn, (("iam:PassedToService", "ec2.amazonaws.com"),), why=why),
    ]
    auths += [
        Auth(run, _ec2_arn(dep, "security-group", sg), (*lt, *own("SecurityGroupIds")), why=why)
        for sg in p.get("SecurityGroupIds", t["SecurityGroupIds"])
    ]
    if tags:
        create = (("ec2:CreateAction", "RunInstances"), *request_tags, *tag_keys)
        auths.append(Auth("ec2:CreateTags", _ec2_arn(dep, "instance", NEW["instance"]), create, why=why))
    return auths


@dataclass(frozen=True)
class Decision:
    auth: Auth
    decision: str  # Allowed | ImplicitlyDenied | ExplicitlyDenied | Error
    allowed_by: tuple[str, ...]

    @property
    def allowed(self) -> bool:
        return self.decision == "Allowed"


def evaluate(
    policies: dict[str, dict[str, Any]],
    asks: Sequence[tuple[str, str, Auth]],
    *,
    account: str,
    bucket_policy: dict[str, Any] | None = None,
    bucket: str = "",
) -> list[Decision]:
    """Each (principal ARN, identity policy name, Auth) → the evaluator's decision. The bucket's
    policy, when given, is the resource policy of every request on that bucket."""
    docs = dict(policies)
    if bucket_policy:
        docs["__bucket__"] = bucket_policy
    requests = []
    for i, (principal, policy, auth) in enumerate(asks):
        on_bucket = bucket and auth.resource.startswith(f"arn:aws:s3:::{bucket}")
        requests.append(
            {
                "id": i,
                "principal": principal,
                "account": account,
                "action": auth.action,
                "resource": auth.resource,
                "context": {k: list(v) if isinstance(v, tuple) else v for k, v in auth.context},
                "identity": [policy],
                "resourcePolicy": "__bucket__" if bucket_policy and on_bucket else None,
            }
        )
    out = subprocess.run(
        ["node", str(EVALUATOR)],
        input=json.dumps({"policies": docs, "requests": requests}),
        capture_output=True,
        text=True,
        check=True,
    )
    answers = sorted(json.loads(out.stdout), key=lambda a: a["id"])
    errors = [a for a in answers if a["decision"] == "Error"]
    assert not errors, f"the evaluator refused a request as malformed: {errors[:3]}"
    return [Decision(asks[a["id"]][2], a["decision"], tuple(a["allowedBy"])) for a in answers]


def without(policy: dict[str, Any], sid: str) -> dict[str, Any]:
    out = copy.deepcopy(policy)
    out["Statement"] = [s for s in out["Statement"] if s.get("Sid") != sid]
    return out


def moto_projection(policy: dict[str, Any]) -> dict[str, Any]:
    """What moto can enforce of `policy`: S3 and SQS statements without conditions as they are;
    the actions of every other statement (and those moto resolves no resource for) allowed on
    Resource "*" with no Condition — the evaluator checks those calls exactly afterwards."""
    exact, wide = [], []
    for stmt in copy.deepcopy(policy)["Statement"]:
        actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
        actions += [_MOTO_BATCH[a] for a in actions if a in _MOTO_BATCH]
        actions += ["monitoring:" + a.split(":", 1)[1] for a in actions if a.startswith("cloudwatch:")]
        blind = [a for a in actions if a in _MOTO_BLIND or a.split(":")[0] not in _MOTO_EXACT or "Condition" in stmt]
        wide += blind
        if len(blind) < len(actions):
            exact.append({**stmt, "Action": [a for a in actions if a not in blind]})
    if wide:
        exact.append({"Sid": "WidenedForMoto", "Effect": "Allow", "Action": sorted(set(wide)), "Resource": "*"})
    return {"Version": policy["Version"], "Statement": exact}


def unused(policy: dict[str, Any], decisions: Iterable[Decision]) -> list[str]:
    """`Sid: action` for every action of a statement that allowed no call of the run."""
    used = {(sid, d.auth.action) for d in decisions if d.allowed for sid in d.allowed_by}
    out = []
    for stmt in policy["Statement"]:
        actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
        out += [f"{stmt.get('Sid')}: {a}" for a in actions if (stmt.get("Sid"), a) not in used]
    return out
