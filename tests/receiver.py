"""A webhook receiver on 127.0.0.1: records every POST and answers as told (a status per
attempt, or a hang), in a thread of the test process."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    url: str = ""
    answers: list[int] = field(default_factory=list)  # status per attempt, then 200
    hang_s: float = 0.0  # wait this long before answering
    got: list[Received] = field(default_factory=list)

    def wait(self, n: int, timeout: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.got) >= n, f"{len(self.got)} webhook(s) received, expected {n}"
        return self.got


@contextmanager
def receiver(answers: list[int] | None = None, hang_s: float = 0.0) -> Iterator[Receiver]:
    rec = Receiver(answers=list(answers or []), hang_s=hang_s)
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with lock:
                rec.got.append(Received({k.lower(): v for k, v in self.headers.items()}, body, time.time()))
                status = rec.answers.pop(0) if rec.answers else 200
            time.sleep(rec.hang_s)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/iraas?token=t0ps3cret"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
