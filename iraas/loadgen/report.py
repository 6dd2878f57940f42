"""What a load-generator run saw: per-request records and the summary people read."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Record:
    name: str
    sent_at: float  # seconds since the run started
    latency: float
    label: str | None  # None when the request failed
    error: str | None = None  # kind: "HTTP 413", "ReadTimeout", "failed: gave_up", ...
    correct: bool | None = None  # None when there was no expected label


@dataclass(frozen=True)
class Sample:
    at: float
    workers: int
    backlog: int


@dataclass
class Report:
    url: str
    api: str
    elapsed: float
    records: list[Record] = field(default_factory=list)
    cluster: list[Sample] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ok = [r for r in self.records if r.error is None]
        lat = sorted(r.latency for r in ok)
        wrong = [r for r in ok if r.correct is False]
        return {
            "sent": len(self.records),
            "answered": len(ok),
            "correct": sum(1 for r in ok if r.correct),
            "wrong": len(wrong),
            "unchecked": sum(1 for r in ok if r.correct is None),
            "errors": dict(Counter(r.error for r in self.records if r.error)),
            "throughput_per_s": round(len(ok) / self.elapsed, 2) if self.elapsed > 0 else 0.0,
            "elapsed_s": round(self.elapsed, 3),
            "latency_s": _latency(lat),
            "wrong_answers": [{"name": r.name, "got": r.label} for r in wrong],
        }

    def to_json(self) -> str:
        return json.dumps(
            {
                "url": self.url,
                "api": self.api,
                "summary": self.summary(),
                "records": [asdict(r) for r in self.records],
                "cluster": [asdict(s) for s in self.cluster],
            },
            indent=1,
        )

    def text(self) -> str:
        s = self.summary()
        lat = s["latency_s"]
        lines = [
            f"sent {s['sent']}, answered {s['answered']}, correct {s['correct']}, wrong {s['wrong']}, "
            f"unchecked {s['unchecked']}, errors {sum(s['errors'].values())}",
            f"throughput {s['throughput_per_s']} answers/s over {s['elapsed_s']} s",
        ]
        if lat:
            lines.append("latency s: " + ", ".join(f"{k} {v:.3f}" for k, v in lat.items()))
        lines += [f"error {kind}: {n}" for kind, n in s["errors"].items()]
        lines += [f"wrong: {w['name']} → {w['got']}" for w in s["wrong_answers"][:20]]
        return "\n".join(lines)

    def plot(self, path: str | Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
        ok = [r for r in self.records if r.error is None]
        ax1.scatter([r.sent_at + r.latency for r in ok], [r.latency for r in ok], s=4, label="latency")
        ax1.set_ylabel("latency (s)")
        ax1.set_title(f"{self.url} ({self.api})")
        ax2.step([c.at for c in self.cluster], [c.workers for c in self.cluster], where="post", label="workers")
        ax2b = ax2.twinx()
        ax2b.plot(
            [c.at for c in self.cluster], [c.backlog for c in self.cluster], color="tab:orange", label="queue backlog"
        )
        ax2.set_ylabel("workers")
        ax2b.set_ylabel("backlog")
        ax2.set_xlabel("time since start (s)")
        fig.legend(loc="upper right")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _latency(lat: list[float]) -> dict[str, float]:
    if not lat:
        return {}

    def pct(p: float) -> float:
        return lat[max(0, math.ceil(p / 100 * len(lat)) - 1)]  # nearest rank

    return {
        "min": lat[0],
        "mean": statistics.fmean(lat),
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "max": lat[-1],
    }
