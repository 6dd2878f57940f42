"""The AWS queue: an SQS standard queue, with a dead-letter queue through a redrive policy.

The boto3 client is made by the caller (`iraas._aws.client`), so the endpoint (AWS, moto's server,
LocalStack) and credentials are explicit. Parameters are checked before any call, with the
same messages as the embedded queue.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from .._aws import error_code
from .base import (
    Depth,
    Message,
    QueueError,
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
        self.url: str = ""
        self._dlq: SqsQueue | None = None
        attributes: dict[str, str] = {}
        if max_receives and create:
            self._dlq = SqsQueue(client, f"{name}-dlq")
            arn = client.get_queue_attributes(QueueUrl=self._dlq.url, AttributeNames=["QueueArn"])["Attributes"]
            policy = {"deadLetterTargetArn": arn["QueueArn"], "maxReceiveCount": str(max_receives)}
            attributes["RedrivePolicy"] = json.dumps(policy)
        self.url = self._find_or_create(create, attributes)

    def _find_or_create(self, create: bool, attributes: dict[str, str]) -> str:
        try:
            url = str(self.client.get_queue_url(QueueName=self.name)["QueueUrl"])
            if attributes:
                self.client.set_queue_attributes(QueueUrl=url, Attributes=attributes)
            return url
        except ClientError as exc:
            if ("NonExistentQueue" not in error_code(exc) and error_code(exc) != "QueueDoesNotExist") or not create:
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
        return str(self.client.send_message(QueueUrl=self.url, MessageBody=body, DelaySeconds=delay_s)["MessageId"])

    def send_batch(self, bodies: Sequence[str]) -> list[str]:
        check_send(bodies)
        entries = [{"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies)]
        ids: dict[str, str] = {}
        for attempt in range(5):
            resp = self.client.send_message_batch(QueueUrl=self.url, Entries=entries)
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
        resp = self.client.receive_message(
            QueueUrl=self.url,
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
        resp = self.client.delete_message_batch(QueueUrl=self.url, Entries=entries)
        # Stale receipts fail per entry; as on the embedded queue they are no-ops.
        bad = [f for f in resp.get("Failed", []) if f.get("Code") not in _STALE_RECEIPT]
        if bad:
            raise QueueError(f"SQS could not delete: {bad}")

    def change_visibility(self, receipt: str, visibility_s: int) -> bool:
        check_visibility(visibility_s)
        try:
            self.client.change_message_visibility(
                QueueUrl=self.url, ReceiptHandle=receipt, VisibilityTimeout=visibility_s
            )
        except ClientError as exc:
            if error_code(exc) in _STALE_RECEIPT:
                return False
            raise
        return True

    def release(self, receipts: Sequence[str]) -> None:
        check_receipts(receipts)
        entries = [{"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": 0} for i, r in enumerate(receipts)]
        resp = self.client.change_message_visibility_batch(QueueUrl=self.url, Entries=entries)
        bad = [f for f in resp.get("Failed", []) if f.get("Code") not in _STALE_RECEIPT]
        if bad:
            raise QueueError(f"SQS could not release: {bad}")

    def writable(self) -> None:
        try:
            self.client.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])
        except ClientError as exc:
            raise QueueError(f"SQS queue {self.name}: {exc}") from exc

    def depth(self) -> Depth:
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        attrs = self.client.get_queue_attributes(QueueUrl=self.url, AttributeNames=names)["Attributes"]
        return Depth(*(int(attrs.get(n, 0)) for n in names))

    def purge(self) -> None:
        self.client.purge_queue(QueueUrl=self.url)
