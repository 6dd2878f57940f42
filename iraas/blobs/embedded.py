"""The embedded blob store: images as files in a directory, the small records written per
image or per second (results, dedup entries, heartbeats, the cluster status) as rows of a
SQLite file inside it, `<root>/.records.db` (a name no key can take). A row costs a fraction
of a file: no inode, no directory entry."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .base import BlobStore
from .local import DirectoryBlobStore
from .routed import RoutedBlobStore
from .sqlite import SqliteBlobStore

log = logging.getLogger(__name__)

RECORD_FILE = ".records.db"
_MOVE_CHUNK = 500


def embedded_store(root: str | Path, records: Sequence[str], clock: Callable[[], float] = time.time) -> BlobStore:
    """The store at `root`, the keys under each folder of `records` ("results/") kept in its
    record file. Records an earlier release kept as files are moved in first."""
    files = DirectoryBlobStore(root)
    if not records:
        return files
    rows = SqliteBlobStore(files.root / RECORD_FILE, clock)
    for folder in records:
        _move_in(files, rows, folder)
    return RoutedBlobStore(files, dict.fromkeys(records, rows))


def _move_in(files: DirectoryBlobStore, rows: SqliteBlobStore, folder: str) -> None:
    """Each file under `folder` into the record file (written durably, then the file removed:
    a crash in between moves it again, and the row written first stays). Its age starts anew."""
    if not os.path.isdir(files.root / folder):
        return
    keys = files.list(folder)
    for i in range(0, len(keys), _MOVE_CHUNK):
        chunk = keys[i : i + _MOVE_CHUNK]
        rows.put_many(files.get_many(chunk), if_absent=True)
        for key in chunk:
            files.delete(key)
    for dirpath, _, _ in sorted(os.walk(files.root / folder), reverse=True):  # deepest first
        with contextlib.suppress(OSError):  # not empty: a file made meanwhile stays
            os.rmdir(dirpath)
    if keys:
        log.info("moved %d record(s) under %s into %s", len(keys), folder, RECORD_FILE)
