"""The answers a worker gives, built from what happened to each request: pure functions."""

from __future__ import annotations

from ..imaging import ImageError
from ..messages import Request, Result
from ..model.classifier import Prediction, StageTimes


def per_image(before: StageTimes, after: StageTimes, n: int) -> dict[str, float]:
    """Decode (with preprocessing) and inference seconds per image of a batch of `n`."""
    n = max(n, 1)
    return {
        "decode": (after.decode + after.preprocess - before.decode - before.preprocess) / n,
        "inference": (after.inference - before.inference) / n,
    }


def recognised(req: Request, outcome: Prediction | ImageError, timings: dict[str, float], worker: str) -> Result:
    """A recognition's final answer: its labels, or why the image could not be recognised."""
    if isinstance(outcome, ImageError):
        return Result.failure(req, outcome.code, outcome.reason, timings=timings, worker=worker)
    top5 = [{"label": t.label, "index": t.index, "probability": round(t.probability, 6)} for t in outcome.top]
    answer = {"label": outcome.label, "confidence": round(outcome.probability, 6), "top5": top5}
    return Result.of(req, "done", timings=timings, worker=worker, **answer)


def expired(req: Request, received_at: float, worker: str) -> Result:
    """Past its deadline when a worker took it: never recognised (the client said it is of no
    use then)."""
    waited = received_at - req.submitted_at
    given = req.deadline - req.submitted_at
    reason = f"still queued {waited:.1f} s after it was sent, past its deadline of {given:g} s: not recognised"
    timings = {"queued": round(waited, 4), "total": round(waited, 4)}
    return Result.failure(req, "expired", reason, timings=timings, worker=worker)


def outcome_line(result: Result) -> str:
    """What the worker's log says of one answer."""
    if result.status == "done":
        return f"{result.label} in {result.timings.get('total', 0):.3f} s"
    return f"failed: {result.error}: {result.reason}"
