"""The dependency lock instances install from: every package pinned, each with its SHA-256.

Made at deploy by pip's own resolver (`pip install --dry-run --report`) for the instances'
platform (Amazon Linux 2023: CPython 3.11, x86_64, glibc 2.34), constrained to the versions
installed here, the ones this deployment was tested with. The wheel being deployed is the
lock's last line, by file path and hash, so `pip install --require-hashes --no-deps -r LOCK`
on an instance installs exactly this and nothing else.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PYTHON = "3.11"
# glibc 2.34 runs every manylinux wheel back to 2.17 (pip's --platform takes each tag literally)
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(34, 16, -1)] + ["manylinux2014_x86_64"]
INSTALL_DIR = "/opt/iraas/dist"  # where the instances' user-data puts the wheel


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _installed() -> str:
    pins = {d.metadata["Name"].lower(): d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}
    pins.pop("iraas", None)
    return "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def resolve(wheel: Path) -> list[tuple[str, str, str]]:
    """(name, version, sha256) of every package the wheel needs on the instances."""
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(_installed())
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed"]
        cmd += ["--only-binary=:all:", "--python-version", PYTHON, "--implementation", "cp"]
        cmd += [arg for tag in PLATFORMS for arg in ("--platform", tag)]
        cmd += ["--target", str(Path(tmp) / "t"), "--report", str(report), "-c", str(constraints), str(wheel)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"could not resolve the dependency lock: {done.stderr.strip()[-2000:]}")
        items = json.loads(report.read_text())["install"]
    out = []
    for item in items:
        url = item["download_info"]["url"]
        if url.endswith("/" + wheel.name):
            continue
        digest = item["download_info"].get("archive_info", {}).get("hashes", {}).get("sha256")
        if not digest:
            raise RuntimeError(f"no SHA-256 for {url} in pip's report")
        out.append((item["metadata"]["name"], item["metadata"]["version"], digest))
    return sorted(out)


def lock_text(wheel: Path, pins: list[tuple[str, str, str]]) -> str:
    lines = [f"{name}=={version} --hash=sha256:{digest}" for name, version, digest in pins]
    lines.append(f"iraas @ file://{INSTALL_DIR}/{wheel.name} --hash=sha256:{sha256(wheel)}")
    return "# made by `iraas aws deploy`; install with pip --require-hashes --no-deps -r\n" + "\n".join(lines) + "\n"


def build_lock(wheel: Path) -> str:
    return lock_text(wheel, resolve(wheel))
