"""decide(): table tests of the pure scaling decision."""

from __future__ import annotations

import pytest

from iraas.autoscale import Observation, Policy, State, decide

P = Policy(min_workers=0, max_workers=4, target_per_worker=8, scale_in_after_s=10)


def _run(steps: list[tuple[float, int, int, int]], policy: Policy = P) -> list[int]:
    """steps: (now, backlog, workers, busy) → desired after each."""
    state, out = State(), []
    for now, backlog, workers, busy in steps:
        decision, state = decide(Observation(backlog, workers, busy), policy, state, now)
        out.append(decision.desired)
    return out


@pytest.mark.parametrize(
    ("backlog", "workers", "expected"),
    [
        (0, 0, 0),  # idle and empty: nothing runs
        (1, 0, 1),  # from zero: one request starts a worker at once
        (8, 0, 1),  # exactly one worker's worth
        (9, 0, 2),  # ceil
        (100, 0, 4),  # a burst: bounded by max_workers
        (100, 2, 4),  # scale out from some
        (16, 2, 2),  # steady
    ],
)
def test_first_decision(backlog: int, workers: int, expected: int) -> None:
    assert _run([(0.0, backlog, workers, 0)]) == [expected]


def test_min_workers_stay_warm() -> None:
    policy = Policy(min_workers=1, max_workers=4, target_per_worker=8, scale_in_after_s=5)
    assert _run([(0.0, 0, 0, 0)], policy) == [1]
    assert _run([(t, 0, 3, 0) for t in (0.0, 3.0, 6.0, 9.0)], policy)[-1] == 1


def test_drain_waits_out_the_window_then_scales_in() -> None:
    steps = [(0.0, 40, 4, 4), (2.0, 0, 4, 0), (5.0, 0, 4, 0), (9.0, 0, 4, 0), (10.5, 0, 4, 0), (12.0, 0, 4, 0)]
    # the busy recommendation of t=0 keeps 4 until it leaves the 10 s window
    assert _run(steps) == [4, 4, 4, 4, 0, 0]


def test_flapping_backlog_does_not_flap_the_fleet() -> None:
    steps = [(float(t), 30 if t % 2 == 0 else 0, 4, 0) for t in range(0, 20)]
    assert set(_run(steps)) == {4}


def test_never_below_busy_workers() -> None:
    # backlog says 1 but three workers hold messages: keep them
    steps = [(0.0, 0, 3, 0), (11.0, 1, 3, 3), (22.0, 1, 3, 3)]
    assert _run(steps)[1:] == [3, 3]


def test_scale_in_partially_to_what_the_window_wanted() -> None:
    steps = [(0.0, 20, 4, 0), (5.0, 20, 4, 0), (12.0, 20, 4, 0), (16.0, 20, 4, 0)]
    assert _run(steps)[-1] == 3  # 20 / 8 → 3, after 10 s of wanting 3


def test_decision_explains_itself() -> None:
    decision, _ = decide(Observation(9, 0), P, State(), 0.0)
    assert "scale out" in decision.reason and "9" in decision.reason


def test_a_trickle_keeps_one_worker_although_the_queue_looks_empty() -> None:
    # 5 requests a second, each done before the next tick: backlog 0, but work every tick
    steps = [(t / 4, 0, 1, 0) for t in range(0, 80)]
    state, desired = State(), []
    for now, backlog, workers, busy in steps:
        decision, state = decide(Observation(backlog, workers, busy, recent=1), P, state, now)
        desired.append(decision.desired)
    assert set(desired) == {1}
    # the traffic stops: after a whole window with no work, back to zero
    for t in range(80, 140):
        decision, state = decide(Observation(0, 1, 0, recent=0), P, state, t / 4)
    assert decision.desired == 0


def test_recent_work_never_exceeds_max_workers() -> None:
    zero = Policy(min_workers=0, max_workers=0, target_per_worker=8, scale_in_after_s=10)
    decision, _ = decide(Observation(0, 0, 0, recent=3), zero, State(), 0.0)
    assert decision.desired == 0
