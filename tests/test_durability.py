"""What an accepted image survives on the embedded store: the `durability` setting.

A power cut cannot be made here, but what it would undo can be seen: the page cache's dirty
pages of a file (Linux's `cachestat`) are what a power cut loses. With `durability=power` the
web tier answers an upload only once its input and its queue entry have none; with `process`
(the default: any process's crash, which the fault tests prove) they are still in memory.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from iraas.blobs import local
from iraas.blobs.local import DirectoryBlobStore
from iraas.config import Settings
from iraas.parts import build, make_app

from .conftest import IMAGENET

JPEG = sorted((IMAGENET / "images").iterdir())[0].read_bytes()
_CACHESTAT = 451  # the system call's number on x86-64 and arm64 (Linux 6.5 and later)


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Stat(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("cache", "dirty", "writeback", "evicted", "recently_evicted")]


def dirty_pages(path: Path) -> int:
    """Pages of `path` written but not yet on disk (or being written)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        stat = _Stat()
        if libc.syscall(_CACHESTAT, fd, ctypes.byref(_Range(0, 0)), ctypes.byref(stat), 0) != 0:
            raise OSError(ctypes.get_errno(), f"cachestat({path})")
        return int(stat.dirty + stat.writeback)
    finally:
        os.close(fd)


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@pytest.fixture(params=["process", "power"])
def accepted(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """An upload accepted (202, not waited for) under each durability: (the setting, its input's
    file, the queue's log)."""
    settings = Settings(data_dir=tmp_path, durability=request.param)
    image = JPEG + os.urandom(8)  # bytes no earlier run wrote
    log = tmp_path / "queue.db-wal"
    with TestClient(make_app(settings, build(settings)), base_url="http://127.0.0.1") as client:
        _sync(log)  # the queue's schema, written at start: what is dirty after the upload is its own
        resp = client.post("/v1/recognitions?wait=false", files=[("files", ("a.jpg", image))])
        assert resp.status_code == 202, resp.text
        stored = settings.blob_root / "inputs" / hashlib.sha256(image).hexdigest()
        yield request.param, stored, log


def test_an_accepted_image_is_on_disk_before_its_answer_unless_durability_is_process(
    accepted: tuple[str, Path, Path],
) -> None:
    durability, image, log = accepted
    if durability == "power":
        assert dirty_pages(image) == 0 and dirty_pages(log) == 0
    else:  # the writes the default leaves to the kernel (within 30 s): what `power` waits for
        assert dirty_pages(image) > 0 and dirty_pages(log) > 0


def test_a_durable_put_syncs_the_file_and_the_folder_that_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new file's name is in its directory: on disk only once the directory is synced too."""
    synced: list[str] = []
    fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(local.os, "fsync", spy)
    store = DirectoryBlobStore(tmp_path)
    store.put("inputs/a", b"not on disk until asked", durable=False)
    assert synced == []
    store.put("inputs/b", b"on disk, name and all")
    folder = str(tmp_path / "inputs")
    assert len(synced) == 2 and synced[0].startswith(folder + "/.tmp-") and synced[1] == folder
