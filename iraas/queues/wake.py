"""Cross-process wake-ups for long polling on an embedded queue, without spinning.

A waiting receiver binds a Unix datagram socket in a directory derived from the database
path; a sender, after its commit, sends one byte to as many receivers as it sent messages,
the most recent waiters first, and to every watcher (the controller). The waiter blocks in
`select` and so wakes within a millisecond of a send and uses no CPU meanwhile.

Most recent first: the worker that just finished a request is the one waiting last, its
model's weights still in the CPU's caches (measured at one request at a time: the model took
0.6 ms longer in the other of two workers, which took 42 % of the requests when every send
woke both). Waking as many as there are messages, not all, spares the rest a wake-up and a
claim that finds nothing. A wake-up a receiver does not use (it left before reading it) is
passed on as it leaves, so none is lost to it; lost wake-ups (a waiter killed) only cost
latency: waiters still re-check the database on a timer.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from ..sockets import bound, readable, remove_if_empty, socket_dir

_counter = itertools.count()


class Waker:
    def __init__(self, db_path: Path, queue: str) -> None:
        self.dir = socket_dir("wake", db_path)
        self.prefix = hashlib.sha1(queue.encode()).hexdigest()[:8]

    @contextlib.contextmanager
    def listening(self, watcher: bool = False) -> Iterator[socket.socket]:
        """A socket that receives this queue's wake-ups while the block runs: a receiver's
        (named by when it began waiting: most recent first), or a `watcher`'s (every send)."""
        kind = "w" if watcher else f"r{time.monotonic_ns():020d}"
        path = self.dir / f"{self.prefix}-{kind}-{os.getpid()}-{next(_counter)}"
        sock = bound(path)
        try:
            yield sock
        finally:
            path.unlink(missing_ok=True)
            unused = 0 if watcher else _drain(sock)
            sock.close()
            if unused:  # meant for a message this receiver did not take: for the next one
                self.notify(unused)

    def close(self) -> None:
        """This process is done with the queue: its sockets' directory goes if no other
        process's socket is in it (not after each wait: making it again costs an inode)."""
        remove_if_empty(self.dir)

    @staticmethod
    def wait(sock: socket.socket, timeout: float) -> bool:
        """True when woken, False when `timeout` passed."""
        if not readable(sock, timeout):
            return False
        _drain(sock)  # one check of the database serves them all
        return True

    def notify(self, count: int = 1) -> None:
        """Wake every watcher and the `count` receivers that began waiting last."""
        try:
            names = [e.name for e in os.scandir(self.dir) if e.name.startswith(self.prefix)]
        except FileNotFoundError:
            return
        if not names:
            return
        watchers = [n for n in names if self._watcher(n)]
        # "…-r<when>-…" sorts by when; a name without one (an older version's) sorts last
        receivers = sorted((n for n in names if not self._watcher(n)), reverse=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
            out.setblocking(False)
            for name in watchers:
                self._send(out, name)
            woken = 0
            for name in receivers:
                if woken >= count:
                    break
                woken += self._send(out, name)

    def _watcher(self, name: str) -> bool:
        return name[len(self.prefix) + 1] == "w"  # "<prefix>-w-…"

    def _send(self, out: socket.socket, name: str) -> bool:
        """Whether the waiter at `name` will wake."""
        path = self.dir / name
        try:
            out.sendto(b"!", str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            # A waiter killed without cleaning up (or just gone): remove its socket file.
            path.unlink(missing_ok=True)
            return False
        except OSError:
            return True  # its buffer is full: it has wake-ups pending already
        return True


def _drain(sock: socket.socket) -> int:
    """Read what is waiting on `sock`; how many wake-ups it was."""
    n = 0
    with contextlib.suppress(OSError):
        while sock.recv(64):
            n += 1
    return n
