"""A worker's heartbeat: its state, as any controller or web process reads it (the store keeps it)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


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
    error: str = ""  # a configuration error stopping its work (a permission its role lacks)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Heartbeat:
        return cls(**json.loads(data))
