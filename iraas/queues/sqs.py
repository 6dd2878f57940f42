"""The AWS queue: an SQS standard queue, with a dead-letter queue through a redrive policy.

The boto3 client is made by the caller (`iraas.awsapi.client`), so the endpoint (AWS, moto's server,
LocalStack) and credentials are explicit. Parameters are checked before any call, with the
same messages as the embedded queue.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from ..awsapi import denied, error_code, refused
from .base import (
    Depth,
    Message,
    QueueDenied,
    QueueError,
    QueueMissing,
    check_receipts,
    check_receive,
    check_send,
    check_visibility,
)

_STALE_RECEIPT = {
    "ReceiptHandleIsInvalid",
    "MessageNotInflight",
    "InvalidParameterValue",
    "AWS.SimpleQueueService.NonExistentQueue",
}


class SqsQueue:
    """Find or create the queue `name` (and `<name>-dlq` with redrive when `max_receives`)."""

    def __init__(self, client: Any, name: str, *, max_receives: int | None = None, create: bool = True) -> None:
        """`create=False`: only find the queues (made by the deployment's stack, whose redrive
        policy stands); workers need no right to create or configure queues."""
        self.client = client
        self.name = name
        self.max_receives = max_receives
        self._url = ""
        self._dlq: SqsQueue | None = None
        if not create:
            return  # found on first use: a process whose role may not use the queue still starts
        attributes: dict[str, str] = {}
        if max_receives:
            self._dlq = SqsQueue(client, f"{name}-dlq")
            arn = client.get_queue_attributes(QueueUrl=self._dlq.url, AttributeNames=["QueueArn"])["Attributes"]
            policy = {"deadLetterTargetArn": arn["QueueArn"], "maxReceiveCount": str(max_receives)}
            attributes["RedrivePolicy"] = json.dumps(policy)
        self._url = self._find_or_create(create, attributes)

    @property
    def url(self) -> str:
        if not self._url:
            self._url = self._find_or_create(False, {})
        return self._url

    def _call(self, op: str, *, stale_ok: bool = False, **params: Any) -> Any:
        """`op` on this queue; any refusal as QueueError (QueueDenied when IAM refused it).
        `stale_ok`: None for a receipt that is no longer valid."""
        try:
            return getattr(self.client, op)(QueueUrl=self.url, **params)
        except ClientError as exc:
            if stale_ok and error_code(exc) in _STALE_RECEIPT:
                return None
            if denied(exc):
                raise QueueDenied(refused(f"sqs {op} on {self.name}", exc)) from exc
            if _missing(exc):
                raise QueueMissing(f"SQS queue {self.name} does not exist (any more)") from exc
            raise QueueError(f"SQS {op} on {self.name}: {exc}") from exc

    def _find_or_create(self, create: bool, attributes: dict[str, str]) -> str:
        try:
            url = str(self.client.get_queue_url(QueueName=self.name)["QueueUrl"])
            if attributes:
                self.client.set_queue_attributes(QueueUrl=url, Attributes=attributes)
            return url
        except ClientError as exc:
            if denied(exc):
                raise QueueDenied(refused(f"sqs GetQueueUrl of {self.name}", exc)) from exc
            missing = _missing(exc)
            if missing and not create:
                raise QueueMissing(f"SQS queue {self.name} does not exist") from exc
            if not missing:
                raise QueueError(f"SQS queue {self.name}: {exc}") from exc
        return str(self.client.create_queue(QueueName=self.name, Attributes=attributes)["QueueUrl"])

    @property
    def dead_letter(self) -> SqsQueue | None:
        # Found on first use: workers never touch it and need no rights on it.
        if self._dlq is None and self.max_receives:
            self._dlq = SqsQueue(self.client, f"{self.name}-dlq", create=False)
        return self._dlq

    def send(self, body: str, delay_s: int = 0) -> str:
        check_send([body], delay_s)
        return str(self._call("send_message", MessageBody=body, DelaySeconds=delay_s)["MessageId"])

    def send_batch(self, bodies: Sequence[str]) -> list[str]:
        check_send(bodies)
        entries = [{"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies)]
        ids: dict[str, str] = {}
        for attempt in range(5):
            resp = self._call("send_message_batch", Entries=entries)
            ids.update({ok["Id"]: ok["MessageId"] for ok in resp.get("Successful", [])})
            failed = resp.get("Failed", [])
            if not failed:
                return [ids[str(i)] for i in range(len(bodies))]
            if any(f.get("SenderFault") for f in failed):
                raise QueueError(f"SQS refused messages: {failed}")
            # Server-side partial failure: resend only the failed entries.
            retry = {f["Id"] for f in failed}
            entries = [e for e in entries if e["Id"] in retry]
            time.sleep(0.05 * 2**attempt)
        raise QueueError(f"SQS kept failing {len(entries)} message(s) of a batch")

    def receive(self, max_messages: int = 1, wait_s: float = 0, visibility_s: int = 30) -> list[Message]:
        check_receive(max_messages, wait_s, visibility_s)
        resp = self._call(
            "receive_message",
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=math.ceil(wait_s),  # 0.5 must not become a busy short poll
            VisibilityTimeout=visibility_s,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        )
        return [
            Message(
                id=m["MessageId"],
                body=m["Body"],
                receipt=m["ReceiptHandle"],
                receive_count=int(m["Attributes"]["ApproximateReceiveCount"]),
                sent_at=int(m["Attributes"]["SentTimestamp"]) / 1000.0,
            )
            for m in resp.get("Messages", [])
        ]

    def delete(self, receipt: str) -> None:
        self.delete_batch([receipt])

    def delete_batch(self, receipts: Sequence[str]) -> None:
        check_receipts(receipts)
        entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts)]
        resp = self._call("delete_message_batch", Entries=entries)
        # Stale receipts fail per entry; as on the embedded queue they are no-ops.
        bad = [f for f in resp.get("Failed", []) if f.get("Code") not in _STALE_RECEIPT]
        if bad:
            raise QueueError(f"SQS could not delete: {bad}")

    def change_visibility(self, receipt: str, visibility_s: int) -> bool:
        check_visibility(visibility_s)
        done = self._call(
            "change_message_visibility", stale_ok=True, ReceiptHandle=receipt, VisibilityTimeout=visibility_s
        )
        return done is not None

    def release(self, receipts: Sequence[str]) -> None:
        check_receipts(receipts)
        entries = [{"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": 0} for i, r in enumerate(receipts)]
        resp = self._call("change_message_visibility_batch", Entries=entries)
        bad = [f for f in resp.get("Failed", []) if f.get("Code") not in _STALE_RECEIPT]
        if bad:
            raise QueueError(f"SQS could not release: {bad}")

    def writable(self) -> None:
        self._call("get_queue_attributes", AttributeNames=["QueueArn"])

    def depth(self) -> Depth:
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        attrs = self._call("get_queue_attributes", AttributeNames=names)["Attributes"]
        return Depth(*(int(attrs.get(n, 0)) for n in names))

    def wakeups(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()  # SQS tells nobody of a send

    def purge(self) -> None:
        self._call("purge_queue")


def _missing(exc: ClientError) -> bool:
    return "NonExistentQueue" in error_code(exc) or error_code(exc) == "QueueDoesNotExist"
