"""Several hosts on one machine: a Linux network namespace per host, each joined by a veth pair
to a bridge of the test's own, on a private /24 that nothing else uses. A host is cut off by
setting its link down (its processes keep running, unreachable, as on a failed switch port).

Needs root and iproute2 (`ip`); missing either, the tests fail loudly, never skip.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from pathlib import Path


def _free_subnet() -> str:
    """A private /24 no interface of this machine is on (a run killed before its clean-up may
    have left its bridge behind)."""
    used = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    for second in range(77, 250):
        if f" 10.{second}.0." not in used:
            return f"10.{second}.0"
    raise RuntimeError("no free 10.x.0.0/24 for the test network")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Lan:
    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("the several-host tests make network namespaces: run them as root")
        self.tag = "ir" + uuid.uuid4().hex[:4]
        self.subnet = subnet = _free_subnet()
        self.bridge = f"{self.tag}br"
        self.hosts: dict[str, str] = {}  # name → address
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{subnet}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def _veth(self, host: str) -> str:
        return f"{self.tag}{host}"[:15]  # interface names: at most 15 bytes

    def add(self, host: str) -> str:
        """A new host on the LAN; its address."""
        address = f"{self.subnet}.{10 + len(self.hosts)}"
        ns, veth = self.ns(host), self._veth(host)
        _ip("netns", "add", ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        self.hosts[host] = address
        return address

    def run(self, host: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A process on `host`, its output appended to `log`."""
        with open(log, "ab") as out:
            return subprocess.Popen(
                ["ip", "netns", "exec", self.ns(host), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )

    def cut(self, host: str) -> None:
        """`host` off the network: its link down; its processes run on, unreachable."""
        _ip("link", "set", self._veth(host), "down")

    def mend(self, host: str) -> None:
        _ip("link", "set", self._veth(host), "up")

    def close(self) -> None:
        for host in self.hosts:
            pids = subprocess.run(["ip", "netns", "pids", self.ns(host)], capture_output=True, text=True).stdout
            for pid in pids.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "del", self.ns(host)], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
