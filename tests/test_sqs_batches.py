"""SQS batch calls with partial failures (botocore Stubber: moto never fails part of a batch)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from iraas.queues.base import QueueError
from iraas.queues.sqs import SqsQueue

URL = "https://sqs.us-east-1.amazonaws.com/123456789012/jobs"


@pytest.fixture
def stubbed() -> Any:
    client = boto3.client("sqs", region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t")
    with Stubber(client) as stub:
        stub.add_response("get_queue_url", {"QueueUrl": URL}, {"QueueName": "jobs"})
        queue = SqsQueue(client, "jobs", create=False)
        yield queue, stub
        stub.assert_no_pending_responses()


def test_send_batch_resends_only_the_entries_the_server_failed(stubbed: Any) -> None:
    queue, stub = stubbed
    stub.add_response(
        "send_message_batch",
        {
            "Successful": [{"Id": "0", "MessageId": "m0", "MD5OfMessageBody": "x"}],
            "Failed": [{"Id": "1", "SenderFault": False, "Code": "InternalError"}],
        },
        {"QueueUrl": URL, "Entries": [{"Id": "0", "MessageBody": "a"}, {"Id": "1", "MessageBody": "b"}]},
    )
    stub.add_response(  # the retry carries entry 1 only
        "send_message_batch",
        {"Successful": [{"Id": "1", "MessageId": "m1", "MD5OfMessageBody": "x"}], "Failed": []},
        {"QueueUrl": URL, "Entries": [{"Id": "1", "MessageBody": "b"}]},
    )
    assert queue.send_batch(["a", "b"]) == ["m0", "m1"]  # ids in the order of the bodies


def test_send_batch_sender_fault_is_an_error_not_a_retry(stubbed: Any) -> None:
    queue, stub = stubbed
    stub.add_response(
        "send_message_batch",
        {"Successful": [], "Failed": [{"Id": "0", "SenderFault": True, "Code": "InvalidMessageContents"}]},
        {"QueueUrl": URL, "Entries": ANY},
    )
    with pytest.raises(QueueError, match="InvalidMessageContents"):
        queue.send_batch(["\x00"])


def test_delete_batch_ignores_stale_receipts_but_reports_other_failures(stubbed: Any) -> None:
    queue, stub = stubbed
    stub.add_response(
        "delete_message_batch",
        {"Successful": [{"Id": "0"}], "Failed": [{"Id": "1", "SenderFault": True, "Code": "ReceiptHandleIsInvalid"}]},
        {"QueueUrl": URL, "Entries": ANY},
    )
    queue.delete_batch(["r0", "stale"])
    stub.add_response(
        "delete_message_batch",
        {"Successful": [], "Failed": [{"Id": "0", "SenderFault": False, "Code": "InternalError"}]},
        {"QueueUrl": URL, "Entries": ANY},
    )
    with pytest.raises(QueueError, match="InternalError"):
        queue.delete_batch(["r0"])
