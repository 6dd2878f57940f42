"""The scaling decision, as a pure function: no I/O, no clock reading.

Backlog is measured as KEDA's SQS scaler does (visible + in flight). One of three rules
recommends a fleet size (docs/service.md compares them on simulated traces):

- `backlog`, KEDA's: ceil(backlog / target per worker);
- `backlog+cpu`, the write-up's: the same, one more worker while the workers' average CPU is
  high and requests wait, and no scale-in unless CPU is low and nothing waits;
- `wait`: enough workers that the backlog drains within `target_wait_s` at the rate the workers
  measured, projecting a rising backlog over the time a worker takes to start.

Out at once; in only when every recommendation of the last `scale_in_after_s` seconds was lower
(HPA's scale-down stabilisation window), so a flapping queue does not flap the fleet; never
below the busy workers; while any work is being done, at least one worker: the fleet scales to
zero only after a whole window with no work at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

TREND_S = 2.0  # the backlog's trend is measured over this long


@dataclass(frozen=True)
class Policy:
    min_workers: int = 0
    max_workers: int = 2
    target_per_worker: int = 8
    scale_in_after_s: float = 10.0
    target_wait_s: float = 0.0  # > 0: the wait rule, in place of target_per_worker
    cpu_high: float = 0.0  # > 0: the CPU rule; fractions of the workers' cores
    cpu_low: float = 0.3

    @property
    def rule(self) -> str:
        return "wait" if self.target_wait_s > 0 else "backlog+cpu" if self.cpu_high > 0 else "backlog"


@dataclass(frozen=True)
class Observation:
    backlog: int  # visible + in flight
    workers: int  # workers the fleet has now (starting ones included)
    busy: int = 0  # workers holding messages: never stopped
    recent: int = 0  # requests finished since the previous observation
    waiting: int | None = None  # visible only, not in a worker's hands (None: the backlog)
    cpu: float | None = None  # the workers' average CPU use over their last period, 0..1
    rate: float = 0.0  # images/s one worker handles while busy, as measured (0: not yet)
    start_s: float = 0.0  # how long a new worker takes to start, as measured


@dataclass(frozen=True)
class State:
    # (time, recommendation) pairs inside the stabilisation window, oldest first
    history: tuple[tuple[float, int], ...] = field(default_factory=tuple)
    backlogs: tuple[tuple[float, int], ...] = field(default_factory=tuple)  # over the last TREND_S
    rate: float = 0.0  # the last rate measured (no worker may be running now to measure it)
    since: float | None = None  # the first observation: no scale-in before a whole window of them


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str
    rule: str = ""  # backlog, backlog+cpu, wait; busy (work in progress keeps one); window (scale-in held)


def recommend(backlog: int, policy: Policy) -> int:
    raw = math.ceil(backlog / max(policy.target_per_worker, 1))
    return _bounded(raw, policy)


def _bounded(n: int, policy: Policy) -> int:
    return max(policy.min_workers, min(policy.max_workers, n))


def _trend(backlogs: tuple[tuple[float, int], ...]) -> float:
    """Requests a second the backlog grew by over the window (negative: it shrank)."""
    (t0, b0), (t1, b1) = backlogs[0], backlogs[-1]
    return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


def _waiting(obs: Observation) -> int:
    return obs.backlog if obs.waiting is None else obs.waiting


def _wait_rule(obs: Observation, policy: Policy, state: State) -> tuple[int, str]:
    """`state`: this observation's, its backlog the last of the trend's."""
    rate, target = state.rate, policy.target_wait_s
    if rate <= 0:
        n = recommend(obs.backlog, policy)
        return n, f"backlog {obs.backlog} / target {policy.target_per_worker} → {n} (no rate measured yet)"
    # Where the backlog will be when a worker started now is ready, if it keeps rising.
    ahead = obs.backlog + max(_trend(state.backlogs), 0.0) * obs.start_s
    n = math.ceil(ahead / (rate * target) - 1e-9)
    if n > obs.workers and target > obs.start_s:
        # A worker started now drains for only what is left of the target once it is ready.
        rest = ahead - obs.workers * rate * target
        n = obs.workers + math.ceil(rest / (rate * (target - obs.start_s)) - 1e-9)
    n = _bounded(n, policy)
    rising = f", rising to {ahead:.0f} in {obs.start_s:.1f} s" if ahead > obs.backlog + 0.5 else ""
    return n, f"backlog {obs.backlog}{rising}, {rate:.1f}/s a worker: {n} drain it within {target:g} s"


def _cpu_rule(obs: Observation, policy: Policy) -> tuple[int, str]:
    n = recommend(obs.backlog, policy)
    reason = f"backlog {obs.backlog} / target {policy.target_per_worker} → {n}"
    if obs.cpu is not None and obs.cpu >= policy.cpu_high and _waiting(obs) > 0 and obs.workers >= n:
        n = _bounded(obs.workers + 1, policy)
        reason = f"CPU {obs.cpu:.0%} ≥ {policy.cpu_high:.0%} with {_waiting(obs)} waiting → {n}"
    return n, reason


def _recommendation(obs: Observation, policy: Policy, state: State) -> tuple[int, str]:
    if policy.rule == "wait":
        return _wait_rule(obs, policy, state)
    if policy.rule == "backlog+cpu":
        return _cpu_rule(obs, policy)
    n = recommend(obs.backlog, policy)
    return n, f"backlog {obs.backlog} / target {policy.target_per_worker} → {n}"


def _cpu_holds(obs: Observation, policy: Policy) -> bool:
    """The write-up's scale-in condition, unmet: CPU not low, or requests waiting."""
    high = obs.cpu is not None and obs.cpu >= policy.cpu_low
    return policy.cpu_high > 0 and (_waiting(obs) > 0 or high)


def decide(obs: Observation, policy: Policy, state: State, now: float) -> tuple[Decision, State]:
    backlogs = (*((t, b) for t, b in state.backlogs if now - t <= TREND_S), (now, obs.backlog))
    since = now if state.since is None else state.since
    seen = State(state.history, backlogs, obs.rate or state.rate, since)
    rec, why = _recommendation(obs, policy, seen)
    rule = policy.rule
    if (obs.recent or obs.busy) and rec < 1 <= policy.max_workers:
        # A fast service keeps the queue empty at most ticks; "idle" means no work was done,
        # not an empty queue, or a steady trickle would scale to zero and cold-start each time.
        rec, why, rule = 1, f"{why}; work in progress keeps 1", "busy"
    window = (*((t, r) for t, r in state.history if now - t < policy.scale_in_after_s), (now, rec))
    new_state = State(window, backlogs, seen.rate, since)
    if rec >= obs.workers:
        return Decision(rec, f"{'scale out' if rec > obs.workers else 'steady'}: {why}", rule), new_state
    if _cpu_holds(obs, policy):
        cpu = "no CPU figure" if obs.cpu is None else f"CPU {obs.cpu:.0%}"
        return Decision(obs.workers, f"hold: {why}, but {cpu}, {_waiting(obs)} waiting", "backlog+cpu"), new_state
    # Scale in to the highest recommendation of the window, never below the busy workers.
    stable = max(r for _, r in window)
    if now - since < policy.scale_in_after_s:
        stable = max(stable, obs.workers)  # the window has not been observed in full yet
    desired = max(stable, min(obs.busy, policy.max_workers), policy.min_workers)
    if desired >= obs.workers:
        wait = policy.scale_in_after_s
        return Decision(obs.workers, f"hold: {why}, waiting out the {wait:g} s window", "window"), new_state
    return Decision(desired, f"scale in: {why}; wanted ≤ {stable} for {policy.scale_in_after_s:g} s", rule), new_state
