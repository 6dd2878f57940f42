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


# -- the waiting-time rule ------------------------------------------------------------------

W = Policy(min_workers=0, max_workers=20, target_per_worker=8, scale_in_after_s=10, target_wait_s=2.0)


def test_the_wait_rule_sizes_the_fleet_to_drain_the_backlog_within_the_target() -> None:
    # 10 images/s a worker, 2 s: a worker drains 20 → 100 waiting need 5, 1,000 need all 20
    for backlog, expected in ((100, 5), (101, 6), (20, 1), (1000, 20)):
        decision, _ = decide(Observation(backlog, 0, rate=10.0), W, State(), 0.0)
        assert (decision.desired, decision.rule) == (expected, "wait")


def test_the_wait_rule_uses_the_per_worker_target_until_a_rate_is_measured() -> None:
    decision, state = decide(Observation(100, 0), W, State(), 0.0)
    assert decision.desired == 13 and "no rate measured yet" in decision.reason  # ceil(100 / 8)
    decision, state = decide(Observation(100, 13, rate=50.0), W, state, 1.0)
    assert state.rate == 50.0
    # the workers are gone (scaled to zero): the rate they measured still sizes the next burst
    decision, _ = decide(Observation(400, 0), W, state, 100.0)
    assert decision.desired == 4 and "50.0/s" in decision.reason


def test_the_wait_rule_starts_workers_ahead_of_a_rising_backlog() -> None:
    # 20 more requests every second, workers take 3 s to start: in 3 s the backlog is 100
    state = State()
    for t, backlog in ((0.0, 40), (1.0, 60), (2.0, 80)):
        decision, state = decide(Observation(backlog, 1, busy=1, rate=10.0, start_s=3.0), W, state, t)
    assert decision.desired == 7  # ceil((80 + 20 * 3) / 20), not ceil(80 / 20) = 4
    assert "rising to 140" in decision.reason
    # the same backlog, not rising: no more than it needs
    flat = State()
    for t in (0.0, 1.0, 2.0):
        decision, flat = decide(Observation(80, 1, busy=1, rate=10.0, start_s=3.0), W, flat, t)
    assert decision.desired == 4


def test_the_wait_rule_scales_in_only_after_the_window() -> None:
    state, desired = State(), []
    for t, backlog in ((0.0, 200), (4.0, 10), (8.0, 10), (10.5, 10), (12.0, 10)):
        decision, state = decide(Observation(backlog, 10, rate=10.0), W, state, t)
        desired.append((decision.desired, decision.rule))
    assert desired == [(10, "wait"), (10, "window"), (10, "window"), (1, "wait"), (1, "wait")]


# -- backlog and CPU (the write-up's rule) --------------------------------------------------

C = Policy(min_workers=0, max_workers=6, target_per_worker=8, scale_in_after_s=10, cpu_high=0.8, cpu_low=0.3)


@pytest.mark.parametrize(
    ("obs", "expected", "rule"),
    [
        (Observation(40, 2, busy=2, waiting=36, cpu=0.5), 5, "backlog+cpu"),  # the backlog rule alone
        (Observation(12, 2, busy=2, waiting=10, cpu=0.95), 3, "backlog+cpu"),  # CPU high, work waits: +1
        (Observation(12, 6, busy=6, waiting=10, cpu=0.95), 6, "backlog+cpu"),  # ... never past max
        (Observation(2, 2, busy=2, waiting=0, cpu=0.95), 2, "backlog+cpu"),  # CPU high, nothing waits: steady
        (Observation(0, 3, busy=0, waiting=0, cpu=0.5), 3, "backlog+cpu"),  # CPU not low: no scale-in
        (Observation(0, 3, busy=0, waiting=0, cpu=None), 3, "window"),  # no figure: the window still holds
    ],
)
def test_backlog_and_cpu(obs: Observation, expected: int, rule: str) -> None:
    decision, _ = decide(obs, C, State(), 0.0)
    assert (decision.desired, decision.rule) == (expected, rule), decision.reason


def test_backlog_and_cpu_scales_in_once_cpu_is_low_and_nothing_waits() -> None:
    state = State()
    for t in (0.0, 5.0, 10.5):
        decision, state = decide(Observation(0, 3, waiting=0, cpu=0.5), C, state, t)
    assert decision.desired == 3  # CPU 50 %: held past the window
    decision, state = decide(Observation(0, 3, waiting=0, cpu=0.1), C, state, 11.0)
    assert decision.desired == 0


def test_a_busy_worker_is_never_stopped_by_any_rule() -> None:
    for policy in (P, W, C):
        state = State()
        for t in (0.0, 20.0, 40.0):
            decision, state = decide(Observation(0, 3, busy=2, waiting=0, cpu=0.0, rate=10.0), policy, state, t)
        assert decision.desired == 2, policy.rule
