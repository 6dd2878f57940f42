"""Start the real service (`iraas up`) as a subprocess on a free loopback port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    def __init__(self, data_dir: Path, **settings: object) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        args = [sys.executable, "-m", "iraas.cli", "up", "--data-dir", str(self.data_dir), "--port", str(self.port)]
        for key, value in self.settings.items():
            args += ["--" + key.replace("_", "-"), str(value)]
        self.log = open(self.data_dir.parent / f"{self.data_dir.name}-up.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
            assert self.proc.poll() is None, self.output()
        raise AssertionError("service did not start:\n" + self.output())

    def output(self) -> str:
        return (self.data_dir.parent / f"{self.data_dir.name}-up.log").read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def cluster(self) -> dict[str, Any]:
        return dict(httpx.get(self.url + "/v1/cluster", timeout=10).json())

    def worker_pids(self) -> dict[str, int]:
        beats = {}
        for f in (self.data_dir / "blobs" / "heartbeats").glob("*.json"):
            try:
                beat = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            beats[beat["worker"]] = beat["pid"]
        return beats

    def wait_for(self, predicate: Any, timeout: float = 60, every: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(every)
        raise AssertionError(f"timed out waiting; log:\n{self.output()[-3000:]}")


def course_post(url: str, path: Path) -> str:
    """One request of the unchanged course workload generator: `requests`, field inputFile."""
    import requests

    with open(path, "rb") as fh:
        r = requests.post(url + "/", files={"inputFile": fh}, timeout=120)
    assert r.status_code == 200, r.text
    return r.text


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
