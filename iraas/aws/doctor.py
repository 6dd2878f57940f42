"""`iraas aws doctor`: try, harmlessly, each call a role needs, and say which permission is missing.

Run it with a role's credentials (on the instance, or a profile that assumes the role). Nothing
is changed: reads are of keys that do not exist (S3 answers them 404 only to a caller allowed to
list that prefix, 403 otherwise); writes carry a wrong Content-MD5, which S3 refuses after
authorizing the call (BadDigest); SQS deletes and visibility changes use a receipt that is no
longer valid; a receive is tried only on an empty queue; EC2 calls are dry runs.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from ..awsapi import DENIED, error_code
from .deploy import webhook_secret_name

_BAD_MD5 = base64.b64encode(hashlib.md5(b"not the body").digest()).decode()
_STALE = "AQEBnotavalidreceipthandle=="
# Answers that come only after the call was authorized: the permission is there.
_AUTHORIZED = {
    "NoSuchKey",
    "404",
    "NotFound",
    "BadDigest",
    "InvalidDigest",
    "ReceiptHandleIsInvalid",
    "InvalidParameterValue",
    "DryRunOperation",
    "MessageNotInflight",
}


@dataclass(frozen=True)
class Check:
    permission: str  # what the role needs, as IAM names it
    call: Callable[[], Any]


@dataclass(frozen=True)
class Outcome:
    permission: str
    ok: bool | None  # None: not probed (why in `note`)
    note: str = ""


def run(check: Check) -> Outcome:
    try:
        check.call()
    except _Skip as skip:
        return Outcome(check.permission, None, str(skip))
    except ClientError as exc:
        code = error_code(exc)
        if code in DENIED:
            return Outcome(check.permission, False, code)
        if code not in _AUTHORIZED:
            return Outcome(check.permission, None, f"inconclusive: {code}")
    return Outcome(check.permission, True)


class _Skip(Exception):
    """A check that could not be tried harmlessly now."""


class Probes:
    """The calls, against one deployment's bucket and queues, with one role's clients."""

    def __init__(self, name: str, bucket: str, s3: Any, sqs: Any, ec2: Any, secrets: Any) -> None:
        self.name, self.bucket, self.s3, self.sqs, self.ec2 = name, bucket, s3, sqs, ec2
        self.secrets = secrets

    def _url(self, queue: str) -> str:
        return str(self.sqs.get_queue_url(QueueName=f"{self.name}-{queue}")["QueueUrl"])

    def _s3(self, permission: str, op: str, **params: Any) -> Check:
        return Check(permission, lambda: getattr(self.s3, op)(Bucket=self.bucket, **params))

    def read(self, prefix: str) -> Check:
        need = f"s3:GetObject on {prefix}* and s3:ListBucket for that prefix (else a missing key is 403)"
        return self._s3(need, "get_object", Key=f"{prefix}doctor-missing")

    def write(self, key: str) -> Check:
        return self._s3(f"s3:PutObject on {key}", "put_object", Key=key, Body=b"probe", ContentMD5=_BAD_MD5)

    def delete(self, prefix: str) -> Check:
        return self._s3(f"s3:DeleteObject on {prefix}*", "delete_object", Key=f"{prefix}doctor-missing")

    def listing(self, prefix: str) -> Check:
        return self._s3(f"s3:ListBucket for prefix {prefix}", "list_objects_v2", Prefix=prefix, MaxKeys=1)

    def queue(self, queue: str, action: str) -> Check:
        calls: dict[str, Callable[[str], Any]] = {
            "GetQueueAttributes": lambda url: self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]),
            "ReceiveMessage": self._receive_if_empty,
            "DeleteMessage": lambda url: self.sqs.delete_message(QueueUrl=url, ReceiptHandle=_STALE),
            "ChangeMessageVisibility": lambda url: self.sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=_STALE, VisibilityTimeout=0
            ),
            # 901 s is past SQS's most delay: refused as invalid after authorization, never queued
            "SendMessage": lambda url: self.sqs.send_message(QueueUrl=url, MessageBody="probe", DelaySeconds=901),
        }
        return Check(f"sqs:{action} on {self.name}-{queue}", lambda: calls[action](self._url(queue)))

    def _receive_if_empty(self, url: str) -> Any:
        attrs = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        if int(attrs["Attributes"]["ApproximateNumberOfMessages"]):
            raise _Skip("not probed: the queue holds requests, and a receive counts against their tries")
        return self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=0, VisibilityTimeout=0)

    def webhook_secret(self, secret_id: str) -> Check:
        """Read, as the web tier does at start."""

        def call() -> None:
            self.secrets.get_secret_value(SecretId=secret_id)  # the value dropped: never shown

        return Check(f"secretsmanager:GetSecretValue on {secret_id}", call)

    def reply_queue(self) -> Check:
        return Check(
            f"sqs:CreateQueue on {self.name}-replies-*",
            lambda: self.sqs.create_queue(QueueName=f"{self.name}-replies-doctor"),
        )

    def send_reply(self) -> Check:
        def call() -> Any:
            try:
                url = self._url("replies-doctor")
            except ClientError as exc:
                if error_code(exc) in DENIED:
                    raise
                raise _Skip("not probed: run the web role's checks first (they make a reply queue)") from None
            return self.sqs.send_message(QueueUrl=url, MessageBody="probe", DelaySeconds=901)

        return Check(f"sqs:SendMessage on {self.name}-replies-*", call)

    def fleet(self, action: str, template: str) -> Check:
        tags = [{"ResourceType": "instance", "Tags": [{"Key": "iraas:deployment", "Value": self.name}]}]
        calls: dict[str, Callable[[], Any]] = {
            "DescribeInstances": lambda: self.ec2.describe_instances(DryRun=True),
            "RunInstances": lambda: self.ec2.run_instances(
                DryRun=True,
                LaunchTemplate={"LaunchTemplateName": template, "Version": "$Latest"},
                MinCount=1,
                MaxCount=1,
                TagSpecifications=tags,
            ),
        }
        what = "(and iam:PassRole of the worker role, ec2:CreateTags)" if action == "RunInstances" else ""
        return Check(f"ec2:{action} {what}".strip(), calls[action])


def checks(role: str, p: Probes) -> list[Check]:
    """What `role` ("web": web tier + controller, "worker") needs, in the order it needs it."""
    return _worker_checks(p) if role == "worker" else _web_checks(p)


def _worker_checks(p: Probes) -> list[Check]:
    return [
        *(p.queue("requests", a) for a in ("GetQueueAttributes", "ReceiveMessage", "DeleteMessage")),
        p.queue("requests", "ChangeMessageVisibility"),
        p.send_reply(),
        p.queue("webhooks", "SendMessage"),
        *(p.read(prefix) for prefix in ("inputs/", "results/", "dedup/", "gallery/", "config/", "callbacks/")),
        *(p.write(key) for key in ("results/doctor", "dedup/doctor", "heartbeats/doctor", "callbacks/doctor")),
        p.write("gallery/enrolments/doctor"),
        p.write("gallery/faces.version"),
        p.listing("gallery/enrolments/"),
        p.delete("heartbeats/"),
    ]


def _web_checks(p: Probes) -> list[Check]:
    prefixes = (
        "inputs/",
        "results/",
        "dedup/",
        "gallery/",
        "config/",
        "heartbeats/",
        "cluster/",
        "keys/",
        "usage/",
        "callbacks/",
    )
    writes = ("inputs/", "results/", "gallery/", "config/", "cluster/", "keys/", "usage/", "callbacks/")
    return [
        p.queue("requests", "GetQueueAttributes"),
        p.queue("requests", "SendMessage"),
        p.queue("requests-dlq", "ReceiveMessage"),
        p.queue("requests-dlq", "DeleteMessage"),
        *(p.queue("webhooks", a) for a in ("GetQueueAttributes", "ReceiveMessage", "DeleteMessage", "SendMessage")),
        p.queue("webhooks", "ChangeMessageVisibility"),
        p.webhook_secret(webhook_secret_name(p.name)),
        p.reply_queue(),
        *(p.queue("replies-doctor", a) for a in ("ReceiveMessage", "DeleteMessage", "SendMessage")),
        *(p.read(prefix) for prefix in prefixes),
        *(p.write(f"{prefix}doctor") for prefix in writes),
        p.listing("heartbeats/"),
        p.delete("heartbeats/"),
        p.fleet("DescribeInstances", f"{p.name}-worker"),
        p.fleet("RunInstances", f"{p.name}-worker"),
    ]


def report(role: str, outcomes: list[Outcome]) -> tuple[str, bool]:
    """The lines to print, and whether nothing is missing."""
    lines = [f"{role} role:"]
    for o in outcomes:
        mark = {True: "ok     ", False: "MISSING", None: "?      "}[o.ok]
        lines.append(f"  {mark} {o.permission}" + (f"  ({o.note})" if o.note else ""))
    missing = [o for o in outcomes if o.ok is False]
    lines.append(f"  {len(missing)} missing" if missing else "  nothing missing")
    return "\n".join(lines), not missing
