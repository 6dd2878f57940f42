"""Unix datagram sockets in a private directory: how embedded processes on one machine nudge
each other (reply inboxes, queue wake-ups) with one system call and no polling."""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import socket
import tempfile
from pathlib import Path

_BIND_TRIES = 10


def socket_dir(kind: str, anchor: Path) -> Path:
    """The directory of `kind`'s sockets for `anchor` (a data directory, a queue file): under
    the temp directory, not beside it, as socket paths are limited to ~100 bytes."""
    digest = hashlib.sha1(str(Path(anchor).resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"iraas-{kind}-{digest}"


def bound(path: Path, receive_buffer: int = 0) -> socket.socket:
    """A non-blocking datagram socket bound at `path` (its directory made private), replacing a
    file left there by a process that died."""
    for _ in range(_BIND_TRIES):
        path.parent.mkdir(mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(str(path))
            if receive_buffer:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.setblocking(False)
        except FileNotFoundError:  # another process removed the directory, empty, since mkdir
            sock.close()
            continue
        except OSError:
            sock.close()
            raise
        return sock
    raise FileNotFoundError(f"cannot bind {path}: its directory keeps disappearing")


def remove_if_empty(folder: Path) -> None:
    """Remove a socket directory its last user is done with. Every data directory and queue
    file has its own, in the temp directory, so a process that leaves them (a test suite makes
    thousands) litters it. A directory still in use is not empty, and a process that binds
    just as it goes makes it again (`bound`)."""
    with contextlib.suppress(OSError):
        folder.rmdir()


def readable(sock: socket.socket, timeout_s: float) -> bool:
    """Whether a datagram arrived within `timeout_s` (no CPU spent waiting)."""
    ready, _, _ = select.select([sock], [], [], max(timeout_s, 0.0))
    return bool(ready)
