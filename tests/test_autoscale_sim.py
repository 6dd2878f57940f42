"""The scaling rules over whole traces, on the simulator of benchmarks/autoscale_sim.py (the
real decide(), simulated workers and clock): what each rule promises, at scale."""

from __future__ import annotations

import pytest

from benchmarks.autoscale_sim import Profile, policies, simulate, traces

# This machine's profile as the benchmark measured it (docs/benchmarks.md): what matters here
# is the shape of the traces relative to one worker's rate, which traces() keeps.
PROFILE = Profile(start_s=0.4, per_image_s=(0.008, 0.011, 0.015))
TARGET_S = 2.0
TRACES = traces(PROFILE.rate)


@pytest.mark.parametrize("trace", sorted(TRACES))
def test_every_rule_answers_everything_and_never_stops_a_busy_worker(trace: str) -> None:
    for name, policy in policies(TARGET_S).items():
        fig = simulate(TRACES[trace], policy, PROFILE)
        assert len(fig.waits) == len(TRACES[trace]), name
        assert fig.busy_killed == 0, name
        assert fig.peak <= policy.max_workers, name


@pytest.mark.parametrize("trace", sorted(TRACES))
def test_the_wait_rule_meets_its_target_and_spends_less_than_the_backlog_rule(trace: str) -> None:
    wait = simulate(TRACES[trace], policies(TARGET_S)["wait"], PROFILE).line("wait", trace)
    backlog = simulate(TRACES[trace], policies(TARGET_S)["backlog"], PROFILE).line("backlog", trace)
    assert wait["p95_wait_s"] <= TARGET_S
    # waits up to the target it was given, for fewer worker-seconds than KEDA's default target
    assert wait["worker_s"] < backlog["worker_s"]
