"""Boot-aware scale-up, learned keep-alive and pre-warming of the adaptive policy, fake clock.

A small fake deployment plays the scheduler and the resource manager: instances register
``boot`` seconds after they are requested, the work is a function of the clock, and the
policy's decisions are applied as the loop would (cancel or retire what it releases).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from dask_deploy import Instance, InstanceState
from dask_deploy.policy import (
    Decision,
    Hold,
    Observation,
    PolicySettings,
    ScaleDown,
    ScaleUp,
    WorkerSnapshot,
    load_policy_factory,
)
from dask_deploy.policy.adaptive import AdaptivePolicy, known_work_finishes_in
from dask_deploy.policy.keepalive import PREWARM_MIN_GAPS, GapHistory, choose_plan

GiB = 2**30

Work = Callable[[float], tuple[float, int]]
"""now -> (seconds of known work, tasks queued or processing)."""


def adaptive(**options: object) -> AdaptivePolicy:
    minimum = options.pop("minimum", 0)
    maximum = options.pop("maximum", 20)
    assert isinstance(minimum, int) and isinstance(maximum, int)
    policy = load_policy_factory("adaptive")(
        PolicySettings(minimum=minimum, maximum=maximum, startup_timeout=600, options=options)
    )
    assert isinstance(policy, AdaptivePolicy)
    return policy


def snapshot(name: str, processing: int) -> WorkerSnapshot:
    return WorkerSnapshot(name, f"tcp://{name}", "running", 1, GiB, 0, processing)


@dataclass
class FakeDeployment:
    """Instances that register ``boot`` seconds after their request; work from a schedule."""

    boot: float
    work: Work
    requested: dict[str, float] = field(default_factory=dict)
    decisions: list[tuple[float, Decision]] = field(default_factory=list)
    counter: int = 0

    def observe(self, now: float) -> Observation:
        seconds, tasks = self.work(now)
        registered = sorted(n for n, at in self.requested.items() if now >= at + self.boot)
        workers = tuple(snapshot(n, 1 if i < tasks else 0) for i, n in enumerate(registered))
        instances = tuple(
            Instance(
                n,
                InstanceState.RUNNING if n in registered else InstanceState.PENDING,
                at,
            )
            for n, at in self.requested.items()
        )
        target = (
            min(tasks, math.ceil(seconds / 5.0))
            if seconds > 0
            else len([w for w in workers if w.processing])
        )
        return Observation(
            workers=workers,
            instances=instances,
            adaptive_target=target,
            tasks_processing=min(tasks, len(workers)),
            tasks_queued=max(0, tasks - len(workers)),
            tasks_unrunnable=0,
            workers_to_close=tuple(w.name for w in workers if not w.processing),
            work_seconds=seconds,
        )

    def tick(self, policy: AdaptivePolicy, now: float) -> Decision:
        decision = policy.decide(self.observe(now), now)
        self.decisions.append((now, decision))
        if isinstance(decision, ScaleUp):
            while len(self.requested) < decision.n:
                self.counter += 1
                self.requested[f"w{self.counter}"] = now
        elif isinstance(decision, ScaleDown):
            for name in decision.names:
                del self.requested[name]
        return decision

    def run(self, policy: AdaptivePolicy, start: float, stop: float, interval: float = 1.0) -> None:
        now = start
        while now < stop:
            self.tick(policy, now)
            now += interval


def no_work(now: float) -> tuple[float, int]:
    return 0.0, 0


def test_a_burst_shorter_than_a_boot_requests_nothing() -> None:
    policy = adaptive(minimum=1, boot_time=30)
    one = (snapshot("a", 1),)
    instances = (Instance("a", InstanceState.RUNNING, 0.0),)
    short = Observation(
        workers=one,
        instances=instances,
        adaptive_target=4,
        tasks_processing=1,
        tasks_queued=19,
        work_seconds=20.0,  # one worker is done in 20 s; a new one would register at 30 s
    )
    held = policy.decide(short, now=0.5)
    assert isinstance(held, Hold)
    assert "before a worker requested now could register" in held.reason
    assert held.numbers["work_done_in_s"] == 20.0
    long = Observation(
        workers=one,
        instances=instances,
        adaptive_target=4,
        tasks_processing=1,
        tasks_queued=39,
        work_seconds=200.0,
    )
    up = policy.decide(long, now=1.5)
    assert isinstance(up, ScaleUp) and up.n == 4


def test_an_ended_instance_below_the_minimum_is_replaced_without_work() -> None:
    # An instance removed from outside leaves fewer than the minimum and no work at all: the
    # minimum is kept all the same (the boot-aware hold is for workers above it).
    policy = adaptive(minimum=1, boot_time=30)
    empty = Observation(
        workers=(),
        instances=(),
        adaptive_target=0,
        tasks_processing=0,
        tasks_queued=0,
        work_seconds=0.0,
    )
    up = policy.decide(empty, now=0.5)
    assert isinstance(up, ScaleUp) and up.n == 1
    assert "below the minimum" in up.reason


def test_without_known_work_or_boot_time_it_scales_up_as_before() -> None:
    policy = adaptive(minimum=1)  # no boot seen, no boot_time: cannot tell a short burst
    seen = Observation(
        workers=(snapshot("a", 1),),
        instances=(Instance("a", InstanceState.RUNNING, 0.0),),
        adaptive_target=4,
        tasks_processing=1,
        work_seconds=20.0,
    )
    decision = policy.decide(seen, now=0.5)
    assert isinstance(decision, ScaleUp) and decision.n == 4


def test_pending_instances_whose_work_has_gone_are_cancelled() -> None:
    def work(now: float) -> tuple[float, int]:
        return (200.0, 40) if now < 5 else (3.0, 1)

    deployment = FakeDeployment(boot=30.0, work=work)
    deployment.requested["base"] = -100.0
    policy = adaptive(minimum=1, maximum=8, boot_time=30)
    up = deployment.tick(policy, now=0.5)
    assert isinstance(up, ScaleUp) and up.n == 8
    deployment.run(policy, 1.5, 5.0)
    # The queue emptied: 3 s of work left on the registered worker, the 7 booting would
    # register in about 25 s with nothing to do. They go at once (newest first), not after
    # a window; the registered worker stays.
    down = deployment.tick(policy, now=5.5)
    assert isinstance(down, ScaleDown)
    assert len(down.names) == 7 and "base" not in down.names
    assert down.numbers["pending_too_late"] == 7


def test_a_short_history_falls_back_to_the_ski_rental_window() -> None:
    def work(now: float) -> tuple[float, int]:
        return (80.0, 8) if 0 <= now < 20 else (0.0, 0)

    deployment = FakeDeployment(boot=10.0, work=work)
    policy = adaptive(boot_time=10)
    deployment.run(policy, 0.5, 20.0)
    assert len(deployment.requested) == 8
    # One busy period, no gap yet: the window is 2 B after the last high target (B is now
    # the boot observed, 9.5 s at the midpoint of the ticks around registration).
    assert policy.boot_time == 9.5
    held = deployment.tick(policy, now=30.5)
    assert isinstance(held, Hold)
    assert held.numbers["window_s"] == 19.0
    assert "2x the observed boot time" in held.reason
    assert policy.plan.source == "ski rental"
    down = deployment.tick(policy, now=40.5)
    assert isinstance(down, ScaleDown)


def bursts_every(period: float, length: float, count: int) -> Work:
    """``count`` bursts of ``length`` seconds (40 s of work, 8 tasks), one every ``period``."""

    def work(now: float) -> tuple[float, int]:
        if now < period * count and now % period < length:
            return 40.0, 8
        return 0.0, 0

    return work


def test_a_regular_gap_pattern_prewarms_one_boot_before_the_next_arrival() -> None:
    boot, period = 10.0, 100.0
    deployment = FakeDeployment(boot=boot, work=bursts_every(period, 5.0, 8))
    policy = adaptive(boot_time=boot)
    deployment.run(policy, 0.5, 7 * period)
    assert len(policy.gaps.gaps) >= PREWARM_MIN_GAPS
    plan = policy.plan
    assert plan.learned and plan.prewarm_at is not None
    prewarms = [
        (at, d)
        for at, d in deployment.decisions
        if isinstance(d, ScaleUp) and d.reason.startswith("pre-warming")
    ]
    assert prewarms, "no pre-warm"
    at, decision = prewarms[-1]
    arrival = 7 * period
    # Requested about one boot before the burst: registered when it arrives, not much sooner.
    assert arrival - boot - 0.15 * period <= at <= arrival - boot + 1.0
    # Sized from the work (40 s within one boot), not the peak of 8.
    assert policy.boot_time is not None
    assert decision.n == math.ceil(40.0 / policy.boot_time) < 8
    up_on_arrival = deployment.tick(policy, now=arrival + 0.5)
    assert not isinstance(up_on_arrival, ScaleUp), "the pre-warmed workers finish in a boot"
    # Between bursts (well after one ended and before the next pre-warm) no worker idles.
    assert len([n for n, at in deployment.requested.items() if at < arrival - period]) == 0


def test_long_irregular_gaps_release_right_after_the_work() -> None:
    plan = choose_plan((50.0, 200.0, 120.0, 300.0, 75.0), boot=10.0, ski_rental=20.0)
    assert plan.learned and plan.keep == 0.0


def test_gaps_shorter_than_a_boot_are_kept_through() -> None:
    plan = choose_plan((3.0, 4.0, 3.5, 4.2), boot=10.0, ski_rental=20.0)
    assert plan.learned
    assert 4.2 <= plan.keep < 20.0  # through every gap seen, shorter than the window


def test_two_gaps_do_not_make_a_pattern_to_prewarm_on() -> None:
    plan = choose_plan((100.0, 100.0), boot=10.0, ski_rental=20.0)
    assert plan.prewarm_at is None
    regular = choose_plan((100.0,) * PREWARM_MIN_GAPS, boot=10.0, ski_rental=20.0)
    assert regular.prewarm_at == pytest.approx(100.0)
    assert regular.prewarm_until is not None and regular.prewarm_until >= 100.0


def test_known_work_counts_the_workers_booting_and_the_tasks_left() -> None:
    seen = Observation(
        workers=(snapshot("a", 1),),
        instances=(
            Instance("a", InstanceState.RUNNING, 0.0),
            Instance("b", InstanceState.PENDING, 0.0),
        ),
        adaptive_target=2,
        tasks_processing=1,
        tasks_queued=9,
        work_seconds=30.0,
    )
    # One worker for 10 s (b registers at 10), then two share the 20 s left.
    assert known_work_finishes_in(seen, now=0.0, boot=10.0) == pytest.approx(20.0)
    few_tasks = Observation(
        workers=(snapshot("a", 1), snapshot("c", 1)),
        instances=(
            Instance("a", InstanceState.RUNNING, 0.0),
            Instance("c", InstanceState.RUNNING, 0.0),
        ),
        adaptive_target=1,
        tasks_processing=1,
        tasks_queued=0,
        work_seconds=8.0,
    )
    assert known_work_finishes_in(few_tasks, now=0.0, boot=10.0) == pytest.approx(8.0)
    unknown = Observation(workers=(), instances=(), adaptive_target=0, tasks_processing=0)
    assert known_work_finishes_in(unknown, now=0.0, boot=10.0) is None


def test_boot_time_option_is_validated() -> None:
    from dask_deploy import SettingsError

    with pytest.raises(SettingsError) as raised:
        adaptive(boot_time=-1)
    assert raised.value.key == "policy.options.boot_time"


@pytest.mark.parametrize("first_guess", [0.1, 0.5, 1.8])
def test_a_burst_brings_its_task_count_at_the_measured_duration(first_guess: float) -> None:
    """At a burst's start the scheduler guesses a new task prefix's duration (0.5 s, or twice
    the run time the workers' last heartbeats reported): the burst's work is priced once its
    tasks have run, so the workers kept through a gap do not depend on where a tick fell."""
    gaps = GapHistory()
    gaps.observe(True, 2, 7 * first_guess, 7, now=0.5)  # 7 one-second tasks, duration guessed
    gaps.observe(True, 2, 6 * 1.0, 6, now=1.5)  # the first finished: 1 s measured
    gaps.observe(False, 2, 5 * 2.0, 5, now=2.5)  # the target is back at the minimum
    assert gaps.work == pytest.approx(7.0)
    gaps.observe(False, 1, 0.5, 1, now=8.5)  # work the minimum absorbs is no busy period
    assert gaps.work == pytest.approx(7.0)
