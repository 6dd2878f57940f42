"""A private PostgreSQL server for the tests: Debian's binaries, its own data directory, started
as the `postgres` user (Debian's server refuses to run as root) and stopped with the tests.
A missing PostgreSQL fails loudly (make test installs Debian's `postgresql`).

Local connections (its Unix socket) trust the `postgres` superuser, for set-up only; every
TCP connection, the service's included, authenticates with a password (SCRAM), as a real
deployment's would.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

PASSWORD = "s3cret-" + secrets.token_hex(8)  # per test session; tests check it is never shown
USER = "iraas"


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed: apt-get install postgresql (make test does)")
    return found[-1]


def _as_postgres(cmd: list[str], netns: str = "") -> list[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    if os.geteuid() == 0:
        return [*prefix, "runuser", "-u", "postgres", "--", *cmd]
    return [*prefix, *cmd]


class PgServer:
    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, netns: str = "", fsync: bool = False) -> None:
        """`fsync`: on for benchmarks (the figures a deployment gets); off for the tests."""
        self.host, self.netns, self.fsync = host, netns, fsync
        self.port = port or _free_port()
        # Not under pytest's tmp_path: the postgres user cannot enter root's private directories.
        self.root = Path(tempfile.mkdtemp(prefix="iraas-pg-"))
        self.root.chmod(0o755)
        self.data, self.sockets = self.root / "data", self.root / "run"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = self.root / "server.log"

    def _own(self, *paths: Path) -> None:
        if os.geteuid() == 0:
            for path in paths:
                shutil.chown(path, "postgres", "postgres")

    def start(self) -> PgServer:
        if not self.data.exists():
            self.sockets.mkdir()
            self._own(self.root, self.sockets)
            initdb = [_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8"]
            initdb += ["--auth-local=trust", "--auth-host=scram-sha-256"]
            subprocess.run(_as_postgres(initdb), check=True, capture_output=True)
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write("host all all 0.0.0.0/0 scram-sha-256\n")
        self._run()
        self._wait_ready()
        self.psql(
            f"DO $$ BEGIN CREATE ROLE {USER} LOGIN CREATEDB PASSWORD '{PASSWORD}'; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        return self

    def _run(self) -> None:
        server = [_bin("postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.sockets)]
        # fsync off for the tests: they lose nothing to a power cut they do not make; commits stay
        # synchronous, so a killed server process loses no acknowledged commit.
        fsync = "on" if self.fsync else "off"
        server += ["-c", f"listen_addresses={self.host}", "-c", f"fsync={fsync}", "-c", "max_connections=300"]
        log = open(self._log, "ab")  # noqa: SIM115 (the server's output while it runs)
        self.proc = subprocess.Popen(_as_postgres(server, self.netns), stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def _wait_ready(self, within_s: float = 60) -> None:
        ready = [_bin("pg_isready"), "-q", "-h", str(self.sockets), "-p", str(self.port)]
        deadline = time.monotonic() + within_s
        while subprocess.run(_as_postgres(ready, self.netns)).returncode != 0:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"PostgreSQL did not start:\n{self._log.read_text()[-2000:]}")
            assert time.monotonic() < deadline, f"PostgreSQL not ready:\n{self._log.read_text()[-2000:]}"
            time.sleep(0.05)

    def psql(self, sql: str, db: str = "postgres") -> str:
        cmd = [_bin("psql"), "-h", str(self.sockets), "-p", str(self.port), "-U", "postgres", "-d", db]
        cmd += ["-v", "ON_ERROR_STOP=1", "-qAtc", sql]
        return subprocess.run(_as_postgres(cmd, self.netns), check=True, capture_output=True, text=True).stdout

    def database(self, name: str) -> str:
        """A new empty database owned by the service's user; its URL (password included)."""
        self.psql(f"CREATE DATABASE {name} OWNER {USER}")
        return self.url(name)

    def url(self, db: str, password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@{self.host}:{self.port}/{db}"

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`mode`: fast, or immediate: like a crash)."""
        ctl = [_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]
        subprocess.run(_as_postgres(ctl, self.netns), capture_output=True)
        if self.proc is not None:
            self.proc.wait(60)

    def restart(self) -> None:
        self.stop()
        self.resume()

    def resume(self) -> None:
        """Start the stopped server again, on its data."""
        self._run()
        self._wait_ready()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
