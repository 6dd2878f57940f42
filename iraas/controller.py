"""The controller (the seeds' "load balancer"): observe → decide → apply the difference.

Each tick reads the queue depth, the fleet and the worker heartbeats; replaces workers whose
heartbeat went stale; asks the pure `decide()` how many workers there should be; launches or
stops only the difference (stopping only idle workers, never one holding messages); turns
dead-lettered requests into `failed` results so no client waits forever; and publishes what it
saw and did through the store, for `/v1/cluster` and status queries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .autoscale import Decision, Load, Observation, Policy, State, decide, mean_cpu, mean_rate
from .cloudwatch import MetricsSink
from .duty import Duty, SoleDuty
from .fleet.base import Fleet, Instance
from .lifecycle.cluster import Cluster
from .lifecycle.results import Results, reply
from .logs import about
from .messages import ClusterStatus, Heartbeat, MessageError, Request, Result, WorkerView
from .queues.base import Depth, Queue, QueueError
from .replies import Replies

log = logging.getLogger(__name__)
REACT_S = 0.01  # the shortest time between two ticks that requests woke
HISTORY_EVERY_S, HISTORY_LEN = 2.0, 300  # ten minutes of load, kept in the published status


@dataclass(frozen=True)
class ControllerConfig:
    """What the controller takes from the settings (the composition root derives it)."""

    policy: Policy
    tick_s: float = 0.25
    heartbeat_stale_s: float = 15.0  # a worker silent this long is replaced
    start_grace_s: float = 30.0  # a new worker's time to send its first heartbeat
    max_receives: int = 3  # (as the queue gives up: said in a dead letter's answer)


def _no_sweep() -> int:
    return 0


def _no_counters() -> dict[str, int]:
    return {}


class Controller:
    def __init__(
        self,
        *,
        requests: Queue,
        results: Results,
        cluster: Cluster,
        replies: Replies,
        fleet: Fleet | None,
        config: ControllerConfig,
        sweep: Callable[[], int] = _no_sweep,
        duty: Duty | None = None,
        metrics: MetricsSink | None = None,
        counters: Callable[[], dict[str, int]] = _no_counters,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`fleet`: None on a host without workers (it may still hold the duties); `sweep()`:
        retention (expired blobs removed, how many), run once a minute; `duty`: whether this
        process does the once-per-deployment duties (dead letters, retention, the status, the
        metrics); `metrics`: where the figures go (CloudWatch), with the `counters()` of the
        other duties (webhooks given up)."""
        self.requests, self.results, self.cluster, self.replies = requests, results, cluster, replies
        self.fleet, self.config, self.sweep, self.clock = fleet, config, sweep, clock
        self.duty: Duty = duty or SoleDuty()
        self.metrics, self.counters = metrics, counters
        self.policy = config.policy
        self.state = State()
        self.decisions: deque[dict[str, Any]] = deque(maxlen=50)
        self._last: tuple[int, int] | None = None
        self._work_total: int | None = None
        self._swept_at = -float("inf")
        self._failing: tuple[str, float, int] | None = None  # (error, logged at, repeats since)
        self._short = True  # below max_workers at the last tick: a new request may need one more
        self.dead_total = 0  # dead letters given up since this controller started (a counter)
        # (at, waiting, in flight, workers) every HISTORY_EVERY_S, for the page's chart
        self.history: deque[tuple[float, int, int, int]] = deque(maxlen=HISTORY_LEN)
        self._peak = (0, 0, 0)  # (waiting, in flight, workers) since the last sample
        self.load = Load()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                with self.requests.wakeups() as woken:
                    while not stop.is_set():
                        ticked = time.monotonic()
                        self._safe_tick()
                        self._pause(stop, woken if self._short else None, ticked)
            except QueueError as exc:  # its wake-up channel broke (a database restart): open another
                log.warning("controller: the queue's wake-ups failed (%s); listening again in 1 s", exc)
                stop.wait(1.0)

    def _pause(self, stop: threading.Event, woken: Callable[[float], bool] | None, ticked: float) -> None:
        """Until the next tick: `tick_s` after the last, or sooner when a request is sent (on
        the embedded queue, while the fleet is short): from zero workers the first one is
        launched within milliseconds of the request. On SQS the tick is the wait (a launch
        takes a minute anyway)."""
        if woken is None:
            stop.wait(self.config.tick_s)
            return
        stop.wait(max(ticked + REACT_S - time.monotonic(), 0))  # a burst: one tick per REACT_S
        until = ticked + self.config.tick_s
        while not stop.is_set() and (left := until - time.monotonic()) > 0:
            if woken(min(left, 0.5)):  # short waits: a stop is seen within 0.5 s
                return

    def _safe_tick(self) -> None:
        try:
            decision = self.tick()
            self._short = decision.desired < self.policy.max_workers
            if self._failing is not None:
                log.warning("controller recovered after %d failed tick(s)", self._failing[2] + 1)
                self._failing = None
        except Exception as exc:  # a failed tick must not end the controller: the next may work
            self._log_failure(exc)

    def _log_failure(self, exc: Exception) -> None:
        """The first failure in full; the same one again at most once a minute (a full disk
        must not also fill the log, four ticks a second)."""
        text, now = f"{type(exc).__name__}: {exc}", time.monotonic()
        if self._failing is None or self._failing[0] != text:
            if isinstance(exc, PermissionError):  # a configuration error: the message says it all
                log.error("controller tick failed: %s", exc)
            else:
                log.error("controller tick failed", exc_info=exc)
            self._failing = (text, now, 0)
        elif now - self._failing[1] >= 60:
            log.error("controller tick still failing (%d times in the last minute): %s", self._failing[2] + 1, text)
            self._failing = (text, now, 0)
        else:
            self._failing = (text, self._failing[1], self._failing[2] + 1)

    def tick(self) -> Decision:
        now = self.clock()
        depth = self.requests.depth()
        beats = self.cluster.heartbeats()
        decision, active, instances = self._scale(now, depth, beats)
        self._sample(now, (depth.visible + depth.delayed, depth.in_flight, len(active)))
        if self.duty.held():  # once per deployment: this process, while it holds them
            dead = self.drain_dead_letters()
            self.dead_total += dead
            self._sweep(now)
            status = self._publish(now, depth, dead, beats, instances)
            if self.metrics is not None:
                self.metrics.observe(_gauges(status, depth), {"DeadLetters": self.dead_total, **self.counters()})
        return decision

    def _scale(
        self, now: float, depth: Depth, beats: dict[str, Heartbeat]
    ) -> tuple[Decision, list[Instance], list[Instance]]:
        """This host's workers sized to the whole backlog (at most its `max_workers`): the
        decision, the active workers, and every instance as listed after the change."""
        if self.fleet is None:
            return Decision(0, "no workers on this host"), [], []
        listed = self.fleet.list()
        live = [i for i in listed if i.state != "stopping"]
        active = self._replace_stale(self.fleet, live, beats, now)
        mine = [beats[i.id] for i in active if i.id in beats]
        self.load.started(active, beats)
        obs = Observation(
            backlog=depth.backlog,
            workers=len(active),
            busy=sum(b.state == "busy" for b in mine),
            recent=self._recent_work(beats),
            waiting=depth.visible + depth.delayed,
            cpu=mean_cpu(mine),
            rate=mean_rate(beats.values()),
            start_s=self.load.start_s,
        )
        decision, self.state = decide(obs, self.policy, self.state, now)
        changed = self._apply(self.fleet, decision, active, beats) or len(active) != len(live)
        self._record(decision, obs, now)
        # List again only when this tick launched, stopped or killed (on EC2 a list is an API call).
        return decision, active, self.fleet.list() if changed else listed

    def _sample(self, now: float, load: tuple[int, int, int]) -> None:
        """The load's peaks over each HISTORY_EVERY_S (a burst shorter than that still shows)."""
        peak = self._peak = (max(self._peak[0], load[0]), max(self._peak[1], load[1]), max(self._peak[2], load[2]))
        if not self.history or now - self.history[-1][0] >= HISTORY_EVERY_S:
            self.history.append((round(now, 2), *peak))
            self._peak = (0, 0, 0)

    # -- health and scaling -----------------------------------------------------------------

    def _replace_stale(
        self, fleet: Fleet, active: list[Instance], beats: dict[str, Heartbeat], now: float
    ) -> list[Instance]:
        stale = []
        for inst in active:
            beat = beats.get(inst.id)
            if beat is None:
                if now - inst.launched_at > self.config.start_grace_s:
                    stale.append(inst.id)
            elif now - beat.at > self.config.heartbeat_stale_s:
                stale.append(inst.id)
        if stale:
            log.warning("replacing worker(s) with stale heartbeats: %s", ", ".join(stale))
            fleet.kill(stale)
            for wid in stale:
                self.cluster.remove_heartbeat(wid)
        known = {i.id for i in active}
        for wid, beat in beats.items():  # heartbeats of workers that died unseen
            if wid not in known and now - beat.at > self.config.heartbeat_stale_s:
                self.cluster.remove_heartbeat(wid)
        return [i for i in active if i.id not in stale]

    def _recent_work(self, beats: dict[str, Heartbeat]) -> int:
        """Requests finished since the last tick, from the workers' counters (a worker that
        exits takes its count with it: the delta is clamped at zero)."""
        total = sum(b.processed + b.failed for b in beats.values())
        recent = max(total - self._work_total, 0) if self._work_total is not None else 0
        self._work_total = total
        return recent

    def _apply(self, fleet: Fleet, decision: Decision, active: list[Instance], beats: dict[str, Heartbeat]) -> bool:
        """Launch or stop the difference; True if the fleet was asked to change."""
        diff = decision.desired - len(active)
        if diff > 0:
            launched = fleet.launch(diff)
            log.info("launched %d worker(s): %s", len(launched), ", ".join(launched))
            return bool(launched)
        # Idle first, then those that have not reported yet; busy ones never.
        idle = [i.id for i in active if i.id in beats and beats[i.id].state == "idle"]
        quiet = [i.id for i in active if i.id not in beats]
        victims = (idle + quiet)[:-diff] if diff < 0 else []
        if victims:
            log.info("stopping idle worker(s): %s", ", ".join(victims))
            fleet.stop(victims)
        return bool(victims)

    def _record(self, decision: Decision, obs: Observation, now: float) -> None:
        key = (obs.workers, decision.desired)
        if key == self._last:
            return
        self._last = key
        entry = {
            "at": now,
            "backlog": obs.backlog,
            "workers": obs.workers,
            "busy": obs.busy,
            "desired": decision.desired,
            "rule": decision.rule,
            "reason": decision.reason,
        }
        self.decisions.append(entry)
        log.info("decision: %s (backlog %d, workers %d, busy %d)", decision.reason, obs.backlog, obs.workers, obs.busy)

    def _sweep(self, now: float) -> None:
        """Retention, once a minute (on AWS the bucket's lifecycle rules do it instead)."""
        if now - self._swept_at < 60:
            return
        self._swept_at = now
        removed = self.sweep()
        if removed:
            log.info("retention: removed %d expired blob(s)", removed)

    # -- dead letters -----------------------------------------------------------------------

    def drain_dead_letters(self) -> int:
        dlq = self.requests.dead_letter
        if dlq is None:
            return 0
        handled = 0
        while msgs := dlq.receive(10, wait_s=0, visibility_s=60):
            try:
                for m in msgs:
                    self._give_up(m.body)
                    handled += 1
            except Exception:
                # Back for the next tick, not after the 60 s: a store away for a moment (a pool's
                # connection broken by a database restart, replaced by then) must not hold the
                # answer a client waits for. Any given up already are given up again: first wins.
                with contextlib.suppress(Exception):
                    dlq.release([m.receipt for m in msgs])
                raise
            dlq.delete_batch([m.receipt for m in msgs])
        return handled

    def _give_up(self, body: str) -> None:
        try:
            req = Request.from_json(body)
        except (MessageError, TypeError):
            log.error("unreadable dead letter dropped: %.200s", body)
            return
        attempts = self.config.max_receives
        failed = Result.failure(
            req,
            "gave_up",
            f"gave up after {attempts} attempts: the worker failed or timed out each time",
            timings={"total": round(self.clock() - req.submitted_at, 4)},
        )
        final = self.results.finish(req, failed)  # a late worker may have finished after all
        log.warning("request %s (%s) %s", req.id, req.name, final.reason or final.status, extra=about(req))
        reply(self.replies, req.reply_to, final)

    # -- status -----------------------------------------------------------------------------

    def _publish(
        self, now: float, depth: Depth, dead: int, beats: dict[str, Heartbeat], instances: list[Instance]
    ) -> ClusterStatus:
        status = ClusterStatus(
            at=now,
            # Ids in workers' hands: what a status query calls "running" (one read, not one per worker).
            running=sorted({rid for beat in beats.values() for rid in beat.current}),
            queue={"visible": depth.visible, "in_flight": depth.in_flight, "dead_lettered": dead},
            load=self.load.figures(depth, beats, self.state.rate, self.policy.max_workers),
            dead_letters_total=self.dead_total,
            workers=_views(instances, beats),
            history=[list(h) for h in self.history],
            decisions=list(self.decisions),
            policy=self.policy.__dict__,
            fleet_errors=self.fleet.errors[-5:] if self.fleet else [],
            warm=self.fleet.warm() if self.fleet else None,
            by=f"{socket.gethostname()}:{os.getpid()}",
        )
        self.cluster.publish_status(status)
        return status


def _gauges(status: ClusterStatus, depth: Depth) -> dict[str, float | None]:
    """The figures CloudWatch gets (iraas/cloudwatch.py names them)."""
    working = [w for w in status.workers if w.state not in ("stopping", "stopped", "terminated")]
    cpu = status.load.get("cpu")
    return {
        "Backlog": depth.backlog,
        "Waiting": depth.visible + depth.delayed,
        "InFlight": depth.in_flight,
        "OldestAgeSeconds": depth.oldest_age_s,
        "Workers": len(working),
        "BusyWorkers": sum(w.state == "busy" for w in working),
        "WorkerCPU": None if cpu is None else round(cpu * 100, 1),
        "WorkerRate": status.load.get("rate"),
        "DrainSeconds": status.load.get("drain_s"),
        "BacklogPerWorker": depth.backlog / max(len(working), 1),
    }


def _views(instances: list[Instance], beats: dict[str, Heartbeat]) -> list[WorkerView]:
    """This host's instances, then the workers other hosts run (known by their heartbeats)."""
    mine = [_view(inst, beats.get(inst.id)) for inst in instances]
    ours = {inst.id for inst in instances}
    theirs = [_view(Instance(wid, beat.state, beat.started_at), beat) for wid, beat in beats.items() if wid not in ours]
    return mine + theirs


def _view(inst: Instance, beat: Heartbeat | None) -> WorkerView:
    return WorkerView(
        id=inst.id,
        state=beat.state if beat and inst.state != "stopping" else inst.state,
        last_heartbeat=beat.at if beat else None,
        processed=beat.processed if beat else 0,
        error=beat.error if beat else "",
        launched_at=inst.launched_at,
    )
