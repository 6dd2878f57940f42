"""Who a send on the embedded queue wakes: the receivers that began waiting last, as many as
there are messages, and every watcher; a wake-up a receiver leaves unread goes to the next.

A datagram to a Unix socket is queued at the receiver before `sendto` returns, so whether a
socket has one waiting is known at once (a zero timeout), with no waiting on time."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iraas.queues.sqlite import SqliteQueue
from iraas.queues.wake import Waker
from iraas.replies import SocketReplies
from iraas.sockets import bound, remove_if_empty


def _woken(sock: socket.socket) -> bool:
    return Waker.wait(sock, 0)


@contextlib.contextmanager
def _receivers(waker: Waker, n: int) -> Iterator[list[socket.socket]]:
    """`n` receivers waiting, the first the one that began waiting first."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(waker.listening()) for _ in range(n)]


def test_one_message_wakes_only_the_receiver_that_began_waiting_last(tmp_path: Path) -> None:
    waker = Waker(tmp_path / "q.db", "requests")
    with _receivers(waker, 3) as (first, second, last):
        waker.notify(1)
        assert [_woken(s) for s in (first, second, last)] == [False, False, True]
        waker.notify(2)
        assert [_woken(s) for s in (first, second, last)] == [False, True, True]


def test_watchers_hear_every_send(tmp_path: Path) -> None:
    waker = Waker(tmp_path / "q.db", "requests")
    with waker.listening(watcher=True) as watcher, _receivers(waker, 1) as (receiver,):
        waker.notify(1)
        assert _woken(watcher) and _woken(receiver)
    with waker.listening(watcher=True) as watcher:  # no receiver at all: the controller still hears
        waker.notify(1)
        assert _woken(watcher)


def test_a_receiver_killed_while_waiting_is_passed_over(tmp_path: Path) -> None:
    waker = Waker(tmp_path / "q.db", "requests")
    with _receivers(waker, 1) as (alive,):
        dead = waker.dir / f"{waker.prefix}-r{'9' * 20}-1-1"  # the most recent name, nobody bound
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as gone:
            gone.bind(str(dead))
        waker.notify(1)
        assert _woken(alive)
        assert not dead.exists()  # its socket file removed


def test_a_wake_up_a_receiver_leaves_unread_goes_to_the_next(tmp_path: Path) -> None:
    waker = Waker(tmp_path / "q.db", "requests")
    with _receivers(waker, 1) as (earlier,):
        with waker.listening():
            waker.notify(1)  # to the later one, which leaves without reading it
        assert _woken(earlier)


def test_a_send_to_the_queue_wakes_one_of_two_waiting_receivers(tmp_path: Path) -> None:
    """On the queue itself: a message sent, one wake-up, to the most recent waiter."""
    q = SqliteQueue(tmp_path / "q.db", "requests")
    waker = Waker(tmp_path / "q.db", "requests")
    with _receivers(waker, 2) as (older, newer):
        q.send("hello")
        assert (_woken(older), _woken(newer)) == (False, True)
        q.send_batch(["a", "b"])
        assert (_woken(older), _woken(newer)) == (True, True)
    q.close()


def test_the_sockets_directory_goes_with_its_last_user(tmp_path: Path) -> None:
    """Each queue file and data directory has a directory of sockets in the temp directory: the
    last process to close its queue or inbox there removes it, and none leaves it while another
    is still in it."""
    first, second = SqliteQueue(tmp_path / "q.db", "requests"), SqliteQueue(tmp_path / "q.db", "requests")
    waker = Waker(tmp_path / "q.db", "requests")
    with _receivers(waker, 1) as (receiver,):
        first.close()  # a receiver of the second is still waiting there
        assert waker.dir.is_dir()
        second.send("hello")
        assert _woken(receiver)
    second.close()
    assert not waker.dir.exists()

    replies = SocketReplies(tmp_path / "data")
    one, two = replies.inbox("web1"), replies.inbox("web2")
    one.close()
    assert replies.send("web2", "still here") and two.receive(0) == ["still here"]
    two.close()
    assert not replies.dir.exists()


def test_a_socket_is_bound_after_its_directory_was_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Removed (empty) by another process between this one's mkdir and bind: made again, and
    the socket bound, not an error."""
    folder = tmp_path / "sockets"
    make = Path.mkdir
    made = []

    def mkdir_then_removed(self: Path, *args: Any, **kw: Any) -> None:
        make(self, *args, **kw)
        made.append(self)
        if len(made) == 1:
            remove_if_empty(self)  # the other process, closing its queue just then

    monkeypatch.setattr(Path, "mkdir", mkdir_then_removed)
    sock = bound(folder / "inbox")
    try:
        assert made == [folder, folder] and (folder / "inbox").is_socket()
    finally:
        sock.close()
