"""The container image, built and run as a user would, without a registry or a Docker engine: a
Debian base made by debootstrap from Debian's packages, the Containerfile built on it by buildah
(no daemon: vfs storage, chroot isolation), and the image run with `buildah run`: ready, and an
image answered, by its non-root user, with the model that came inside it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from iraas.model.classifier import Classifier

from .conftest import IMAGENET, ROOT
from .service import free_port

BASE_TAR = ROOT / "build" / "image" / "debian-bookworm-python3.tar"
MIRROR = os.environ.get("IRAAS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")  # pip's, behind a TLS-inspecting proxy
PHOTO = sorted((IMAGENET / "images").iterdir())[7]


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    assert found, f"{name} is missing: `make test` installs it (Debian package {name})"
    return found


def _debian_base() -> Path:
    """A minimal Debian with Python 3.11, as a root filesystem tarball (made once per checkout:
    `make clean` removes it)."""
    if BASE_TAR.is_file():
        return BASE_TAR
    BASE_TAR.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BASE_TAR.parent) as tmp:
        rootfs = Path(tmp) / "rootfs"
        debootstrap = [_tool("debootstrap"), "--variant=minbase", "--include=python3,python3-venv"]
        subprocess.run([*debootstrap, "bookworm", str(rootfs), MIRROR], check=True)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
        subprocess.run(["tar", "-C", str(rootfs), "-cf", f"{tmp}/base.tar", "."], check=True)
        os.replace(f"{tmp}/base.tar", BASE_TAR)
    return BASE_TAR


class Buildah:
    def __init__(self, root: Path) -> None:
        self.cmd = [_tool("buildah"), "--root", str(root / "storage"), "--runroot", str(root / "run")]
        self.cmd += ["--storage-driver", "vfs"]

    def __call__(self, *args: str) -> str:
        done = subprocess.run([*self.cmd, *args], capture_output=True, text=True)
        assert done.returncode == 0, f"buildah {' '.join(args[:2])}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout.strip()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Buildah, str]]:
    root = tmp_path_factory.mktemp("buildah")
    buildah = Buildah(root)
    base = buildah("from", "scratch")
    buildah("add", base, str(_debian_base()), "/")
    buildah("commit", "--quiet", base, "localhost/iraas-debian-base")
    args = ["build", "--isolation", "chroot", "--build-arg", "BASE=localhost/iraas-debian-base"]
    if CA_BUNDLE.is_file():
        args += ["--secret", f"id=pip-ca,src={CA_BUNDLE}"]
    buildah(*args, "--tag", "localhost/iraas:test", "--file", str(ROOT / "Containerfile"), str(ROOT))
    yield buildah, "localhost/iraas:test"
    buildah("rm", "--all")
    buildah("rmi", "--all", "--force")
    shutil.rmtree(root, ignore_errors=True)


def test_the_image_is_configured_to_run_iraas_as_a_user_of_its_own(image: tuple[Buildah, str]) -> None:
    buildah, tag = image
    config = json.loads(buildah("inspect", "--type", "image", tag))["OCIv1"]["config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["iraas"]
    assert "IRAAS_CACHE_DIR=/opt/iraas/models" in config["Env"]


def test_the_image_runs_ready_and_answers_an_image(
    image: tuple[Buildah, str], tmp_path: Path, classifier: Classifier
) -> None:
    buildah, tag = image
    ctr = buildah("from", tag)
    assert buildah("run", "--isolation", "chroot", ctr, "--", "id", "-u") == "10001"
    port = free_port()
    log = tmp_path / "container.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*buildah.cmd, "run", "--isolation", "chroot", ctr, "--", "iraas", "up", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # buildah and what it runs: stopped together
        )
    try:
        url = f"http://127.0.0.1:{port}"
        while True:  # until ready, or the container ends
            assert proc.poll() is None, log.read_text()
            try:
                ready = httpx.get(url + "/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            with contextlib.suppress(subprocess.TimeoutExpired):  # look again at its end, or shortly
                proc.wait(timeout=0.2)
        assert ready.json()["status"] == "ready"
        r = httpx.post(url + "/v1/recognitions", files={"files": (PHOTO.name, PHOTO.read_bytes())}, timeout=120)
        assert r.status_code == 200, r.text
        (answer,) = r.json()
        assert answer["status"] == "done", answer
        assert answer["label"] == classifier.predict([PHOTO.read_bytes()])[0].label
        assert "first start only" not in log.read_text()  # the model came built, inside the image
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        buildah("rm", ctr)
