"""Cross-process wake-ups for long polling on an embedded queue, without spinning.

A waiting receiver binds a Unix datagram socket in a directory derived from the database
path; a sender, after its commit, sends one byte to every socket of that queue. The waiter
blocks in `select` and so wakes within a millisecond of a send and uses no CPU meanwhile.
Lost wake-ups only cost latency: waiters still re-check the database on a timer.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from ..sockets import bound, readable, socket_dir

_counter = itertools.count()


class Waker:
    def __init__(self, db_path: Path, queue: str) -> None:
        self.dir = socket_dir("wake", db_path)
        self.prefix = hashlib.sha1(queue.encode()).hexdigest()[:8]

    @contextlib.contextmanager
    def listening(self) -> Iterator[socket.socket]:
        """A socket that receives this queue's wake-ups while the block runs."""
        path = self.dir / f"{self.prefix}-{os.getpid()}-{next(_counter)}"
        sock = bound(path)
        try:
            yield sock
        finally:
            sock.close()
            path.unlink(missing_ok=True)

    @staticmethod
    def wait(sock: socket.socket, timeout: float) -> bool:
        """True when woken, False when `timeout` passed."""
        if not readable(sock, timeout):
            return False
        with contextlib.suppress(OSError):
            while sock.recv(64):  # drain: one check of the database serves them all
                pass
        return True

    def notify(self) -> None:
        try:
            entries = [e for e in os.scandir(self.dir) if e.name.startswith(self.prefix)]
        except FileNotFoundError:
            return
        if not entries:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
            out.setblocking(False)
            for entry in entries:
                try:
                    out.sendto(b"!", entry.path)
                except (ConnectionRefusedError, FileNotFoundError):
                    # A waiter killed without cleaning up: remove its socket file.
                    Path(entry.path).unlink(missing_ok=True)
                except OSError:
                    pass  # its buffer is full: it has wake-ups pending already
