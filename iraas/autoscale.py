"""The scaling decision, as a pure function: no I/O, no clock reading.

Measure as KEDA's SQS scaler does (backlog = visible + in flight), size as the Kubernetes HPA
does (ceil(backlog / target per worker), bounded by min and max), scale out at once, and scale
in only when every recommendation of the last `scale_in_after_s` seconds was lower (HPA's
scale-down stabilisation window) — so a flapping queue does not flap the fleet. While any
work is being done the recommendation is at least one worker: the fleet scales to zero only
after a whole window with no work at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Policy:
    min_workers: int = 0
    max_workers: int = 2
    target_per_worker: int = 8
    scale_in_after_s: float = 10.0


@dataclass(frozen=True)
class Observation:
    backlog: int  # visible + in flight
    workers: int  # workers the fleet has now (starting ones included)
    busy: int = 0  # workers holding messages: never stopped
    recent: int = 0  # requests finished since the previous observation


@dataclass(frozen=True)
class State:
    # (time, recommendation) pairs inside the stabilisation window, oldest first
    history: tuple[tuple[float, int], ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str


def recommend(backlog: int, policy: Policy) -> int:
    raw = math.ceil(backlog / max(policy.target_per_worker, 1))
    return max(policy.min_workers, min(policy.max_workers, raw))


def decide(obs: Observation, policy: Policy, state: State, now: float) -> tuple[Decision, State]:
    rec = recommend(obs.backlog, policy)
    if obs.recent or obs.busy:
        # A fast service keeps the queue empty at most ticks; "idle" means no work was done,
        # not an empty queue, or a steady trickle would scale to zero and cold-start each time.
        rec = max(rec, min(1, policy.max_workers))
    window = (*((t, r) for t, r in state.history if now - t < policy.scale_in_after_s), (now, rec))
    new_state = State(window)
    if rec >= obs.workers:
        why = "scale out" if rec > obs.workers else "steady"
        return Decision(rec, f"{why}: backlog {obs.backlog} / target {policy.target_per_worker} → {rec}"), new_state
    # Scale in to the highest recommendation of the window, never below the busy workers.
    stable = max(r for _, r in window)
    if not state.history or now - state.history[0][0] < policy.scale_in_after_s:
        stable = max(stable, obs.workers)  # the window has not been observed in full yet
    desired = max(stable, min(obs.busy, policy.max_workers), policy.min_workers)
    if desired >= obs.workers:
        return Decision(
            obs.workers,
            f"hold: backlog {obs.backlog} wants {rec}, waiting out the {policy.scale_in_after_s:g} s window",
        ), new_state
    return Decision(
        desired, f"scale in: backlog {obs.backlog} wanted ≤ {stable} for {policy.scale_in_after_s:g} s"
    ), new_state
