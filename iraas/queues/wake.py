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
import select
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

_counter = itertools.count()


class Waker:
    def __init__(self, db_path: Path, queue: str) -> None:
        digest = hashlib.sha1(str(db_path.resolve()).encode()).hexdigest()[:16]
        # Under the temp dir, not beside the database: socket paths are limited to ~100 bytes.
        self.dir = Path(tempfile.gettempdir()) / f"iraas-wake-{digest}"
        self.prefix = hashlib.sha1(queue.encode()).hexdigest()[:8]

    @contextlib.contextmanager
    def listening(self) -> Iterator[socket.socket]:
        """A socket that receives this queue's wake-ups while the block runs."""
        self.dir.mkdir(mode=0o700, exist_ok=True)
        path = self.dir / f"{self.prefix}-{os.getpid()}-{next(_counter)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(str(path))
            sock.setblocking(False)
            yield sock
        finally:
            sock.close()
            path.unlink(missing_ok=True)

    @staticmethod
    def wait(sock: socket.socket, timeout: float) -> bool:
        """True when woken, False when `timeout` passed."""
        ready, _, _ = select.select([sock], [], [], max(timeout, 0.0))
        if ready:
            with contextlib.suppress(OSError):
                while sock.recv(64):  # drain: one check of the database serves them all
                    pass
        return bool(ready)

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
