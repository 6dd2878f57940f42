"""Worker heartbeats, stored as blobs so that any controller or web process can read them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .blobs.base import BlobError, BlobStore

PREFIX = "heartbeats/"


@dataclass(frozen=True)
class Heartbeat:
    worker: str
    pid: int
    state: str  # starting | idle | busy | stopping
    at: float  # wall clock of this beat
    started_at: float
    processed: int = 0
    failed: int = 0
    current: list[str] = field(default_factory=list)  # request ids in hand

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()


def write(blobs: BlobStore, beat: Heartbeat) -> None:
    blobs.put(PREFIX + beat.worker + ".json", beat.to_json())


def read_all(blobs: BlobStore) -> dict[str, Heartbeat]:
    beats = {}
    for key in blobs.list(PREFIX):
        try:
            beat = Heartbeat(**json.loads(blobs.get(key)))
        except (BlobError, ValueError, TypeError):
            continue  # deleted meanwhile, or half a format change: skip, the next tick sees it
        beats[beat.worker] = beat
    return beats


def remove(blobs: BlobStore, worker: str) -> None:
    blobs.delete(PREFIX + worker + ".json")
