"""One contract for every reply channel: a Unix datagram socket per web process (embedded), a
row woken by NOTIFY (PostgreSQL, a real server, several hosts) and an SQS queue per web process
(AWS, against moto's server). A worker relies on this: a reply
sent to an open inbox arrives once, a reply to an inbox nobody opened says so (False) instead
of waiting, and a send never blocks for long."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from iraas.messages import Result
from iraas.replies import Replies, SocketReplies
from iraas.web.waiting import ReplyWaiter

# Sockets and PostgreSQL keep the order replies were sent in; SQS standard queues need not.
ORDERED = {"socket", "postgres"}
# Where a closed inbox is known gone (a send says False); an SQS queue is only purged.
TELLS_CLOSED = {"socket", "postgres"}


@pytest.fixture(params=["socket", "postgres", "sqs"])
def channel(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Replies]:
    if request.param == "socket":
        return "socket", SocketReplies(tmp_path)
    if request.param == "postgres":
        from iraas.pg import Database
        from iraas.replies import PostgresReplies

        db = Database(request.getfixturevalue("pg_url"))
        db.migrate()
        request.addfinalizer(db.close)
        return "postgres", PostgresReplies(db)
    from iraas.awsapi import client
    from iraas.replies import SqsReplies

    sqs = client("sqs", "us-east-1", request.getfixturevalue("moto"))
    return "sqs", SqsReplies(sqs, "contract-replies")


def test_a_reply_to_an_inbox_nobody_opened_is_refused_not_kept(channel: tuple[str, Replies]) -> None:
    _, replies = channel
    assert replies.send("nobody", "{}") is False


def test_every_reply_reaches_the_open_inbox_once(channel: tuple[str, Replies]) -> None:
    kind, replies = channel
    inbox = replies.inbox("web1")
    sent = [f'{{"n":{i}}}' for i in range(200)]
    got: list[str] = []

    def receive() -> None:
        while len(got) < len(sent) and (batch := inbox.receive(5.0)):
            got.extend(batch)

    receiver = threading.Thread(target=receive)
    receiver.start()
    try:
        # more than the kernel queues for one socket (net.unix.max_dgram_qlen): senders wait
        assert all(replies.send("web1", body) for body in sent)
        receiver.join()
        assert sorted(got) == sorted(sent)  # none lost, none twice
        if kind in ORDERED:
            assert got == sent
        assert inbox.receive(0.05) == []
    finally:
        inbox.close()


def test_a_batch_of_replies_reaches_each_open_inbox_in_order(channel: tuple[str, Replies]) -> None:
    """A worker hands over its batch's replies at once: each to its own web process, those to
    processes gone refused, as a send each would."""
    kind, replies = channel
    first, second = replies.inbox("batch1"), replies.inbox("batch2")
    sent = [("batch1", '{"n":1}'), ("gone", '{"n":2}'), ("batch2", '{"n":3}'), ("batch1", '{"n":4}')]
    try:
        assert replies.send_many(sent) == [True, False, True, True]
        assert replies.send_many([]) == []
        got = first.receive(5.0)
        while len(got) < 2 and (more := first.receive(5.0)):
            got += more
        assert got == ['{"n":1}', '{"n":4}'] if kind in ORDERED else sorted(got) == ['{"n":1}', '{"n":4}']
        assert second.receive(5.0) == ['{"n":3}']
        large = '{"top5": "' + "x" * 9_000 + '"}'  # too large for a NOTIFY payload: a row
        assert replies.send_many([("batch2", large), ("batch2", '{"n":5}')]) == [True, True]
        got = second.receive(5.0)
        while len(got) < 2 and (more := second.receive(5.0)):
            got += more
        assert got == [large, '{"n":5}'] if kind in ORDERED else sorted(got) == sorted([large, '{"n":5}'])
    finally:
        first.close()
        second.close()


def test_a_reply_as_large_as_a_result_can_be_arrives_whole(channel: tuple[str, Replies]) -> None:
    _, replies = channel
    inbox = replies.inbox("web2")
    body = '{"top5": "' + "x" * 60_000 + '"}'
    try:
        assert replies.send("web2", body)
        assert inbox.receive(5.0) == [body]
    finally:
        inbox.close()


def test_after_its_inbox_closed_a_send_does_not_wait_or_fail(channel: tuple[str, Replies]) -> None:
    kind, replies = channel
    inbox = replies.inbox("web3")
    inbox.close()
    # A socket or a database can tell (False: nobody waits there); an SQS queue is purged, not
    # deleted (its name could not be made again for 60 s; inbox names are never reused, and
    # `iraas aws destroy` deletes them), so the send is accepted and never read.
    assert replies.send("web3", "{}") is (kind not in TELLS_CLOSED)


def test_the_web_tiers_event_loop_reads_a_socket_inbox_itself(tmp_path: Path) -> None:
    """A reply on the embedded socket wakes the event loop directly: no thread receives it first
    (a hand-over per reply, ~50 µs, saved); the waiting request gets its result."""
    replies = SocketReplies(tmp_path)
    waiter = ReplyWaiter(replies)

    async def wait_for_reply() -> Result:
        waiter.start(asyncio.get_running_loop())
        try:
            fut = waiter.expect("r1")
            result = Result(id="r1", name="a.jpg", status="done", model="m", label="x")
            assert replies.send(waiter.name, result.to_json())
            assert not [t for t in threading.enumerate() if t.name == "replies"]
            return await fut
        finally:
            waiter.stop()

    assert asyncio.run(wait_for_reply()).label == "x"
    assert replies.send(waiter.name, "{}") is False  # stopped: the inbox is gone
