"""Start the real service (`iraas up`) as a subprocess on a free loopback port."""

from __future__ import annotations

import functools
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

from iraas.blobs.base import BlobStore
from iraas.config import Settings
from iraas.stores import open_blobs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    def __init__(
        self, data_dir: Path, command: str = "up", env: dict[str, str] | None = None, **settings: object
    ) -> None:
        """`env`: variables added to the service's environment (a URL with a password, say:
        not on its command line, where `ps` shows it to every user)."""
        self.data_dir, self.command, self.env = data_dir, command, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        args = [sys.executable, "-m", "iraas.cli", self.command, "--data-dir", str(self.data_dir)]
        args += ["--port", str(self.port)]
        for key, value in self.settings.items():
            flag = "--" + key.replace("_", "-")
            if value is False:  # a setting on by default: its --no- flag
                args += ["--no-" + key.replace("_", "-")]
            else:
                args += [flag] if value is True else [flag, str(value)]
        self.log = open(self._log_path, "ab")  # noqa: SIM115
        env = {**os.environ, **self.env} if self.env else None
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
            assert self.proc.poll() is None, self.output()
        raise AssertionError("service did not start:\n" + self.output())

    @property
    def _log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}-{self.command}-{self.port}.log"

    def output(self) -> str:
        return self._log_path.read_text(errors="replace")

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

    def ready_template(self) -> dict[str, Any]:
        """/v1/cluster's view of the worker template, once it is ready to fork."""
        return dict(self.wait_for(lambda: (w := self.cluster()["warm"] or {}).get("ready") and w, timeout=60))

    def worker_pids(self) -> dict[str, int]:
        beats = {}
        for body in self.blobs.get_many(self.blobs.list("heartbeats/")).values():
            try:
                beat = json.loads(body)
            except ValueError:
                continue
            beats[beat["worker"]] = beat["pid"]
        return beats

    @functools.cached_property
    def blobs(self) -> BlobStore:
        """The service's blob store, opened once (tests poll it every 10 ms)."""
        return open_blobs(Settings(data_dir=self.data_dir))

    def wait_for(self, predicate: Any, timeout: float = 60, every: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(every)
        raise AssertionError(f"timed out waiting; log:\n{self.output()[-3000:]}")


def create_key(data_dir: Path, name: str, scope: str = "recognize", *extra: str) -> str:
    """`iraas keys create`, as an operator types it; the key is its last line of output."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "iraas.cli",
            "keys",
            "create",
            name,
            "--scope",
            scope,
            "--data-dir",
            str(data_dir),
            *extra,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def course_post(url: str, path: Path, field: str = "inputFile", route: str = "/") -> str:
    """One request of an unchanged course workload generator: `requests`, one file in `field`
    (inputFile in 2024, myfile in 2021-2022), POSTed to the deployment's `route`."""
    import requests

    with open(path, "rb") as fh:
        r = requests.post(url + route, files={field: fh}, timeout=120)
    assert r.status_code == 200, r.text
    return r.text


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
