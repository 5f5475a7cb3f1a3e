"""The adaptive policy with a fake clock and hand-made snapshots."""

from __future__ import annotations

import pytest

from dask_deploy import Instance, InstanceState, SettingsError
from dask_deploy.policy import (
    Hold,
    Observation,
    Policy,
    PolicySettings,
    ScaleDown,
    ScaleUp,
    WorkerSnapshot,
    describe,
    load_policy_factory,
)
from dask_deploy.policy.adaptive import AdaptivePolicy

GiB = 2**30


def worker(name: str, *, processing: int = 0, stored: int = 0, limit: int = GiB) -> WorkerSnapshot:
    return WorkerSnapshot(
        name, f"tcp://127.0.0.1:{1000 + hash(name) % 1000}", "running", 1, limit, stored, processing
    )


def observe(
    *,
    target: int,
    running: tuple[WorkerSnapshot, ...] | list[WorkerSnapshot] = (),
    pending: tuple[str, ...] | list[str] = (),
    requested_at: float = 0.0,
    ranking: list[str] | None = None,
) -> Observation:
    instances = [Instance(w.name, InstanceState.RUNNING, 0.0) for w in running]
    instances += [Instance(n, InstanceState.PENDING, requested_at) for n in pending]
    return Observation(
        workers=tuple(running),
        instances=tuple(instances),
        adaptive_target=target,
        tasks_processing=sum(w.processing for w in running),
        workers_to_close=tuple(ranking if ranking is not None else [w.name for w in running]),
    )


def adaptive(**options: object) -> AdaptivePolicy:
    minimum = options.pop("minimum", 0)
    maximum = options.pop("maximum", 100)
    assert isinstance(minimum, int) and isinstance(maximum, int)
    policy = load_policy_factory("adaptive")(
        PolicySettings(minimum=minimum, maximum=maximum, startup_timeout=60, options=options)
    )
    assert isinstance(policy, AdaptivePolicy)
    return policy


def test_zero_to_n_uses_the_floor_then_grows_by_the_factor() -> None:
    policy = adaptive(growth_factor=2.0, growth_floor=4)
    first = policy.decide(observe(target=20), now=0)
    assert isinstance(first, ScaleUp) and first.n == 4
    running = [worker(f"w{i}") for i in range(4)]
    second = policy.decide(observe(target=20, running=running), now=1)
    assert isinstance(second, ScaleUp) and second.n == 8
    assert "growth capped at 8" in second.reason


def test_target_is_clamped_to_minimum_and_maximum() -> None:
    policy = adaptive(minimum=2, maximum=3, growth_floor=10)
    up = policy.decide(observe(target=0), now=0)
    assert isinstance(up, ScaleUp) and up.n == 2
    running = [worker("a"), worker("b")]
    capped = policy.decide(observe(target=50, running=running), now=1)
    assert isinstance(capped, ScaleUp) and capped.n == 3


def test_minimum_is_never_undercut() -> None:
    policy = adaptive(minimum=2, scale_down_window=0)
    running = [worker("a"), worker("b")]
    decision = policy.decide(observe(target=0, running=running), now=0)
    assert isinstance(decision, Hold) and decision.reason == "at target"


def test_scale_down_waits_for_the_highest_target_of_the_window() -> None:
    policy = adaptive(scale_down_window=30)
    running = [worker(n) for n in "abcd"]
    policy.decide(observe(target=4, running=running), now=0)
    held = policy.decide(observe(target=1, running=running), now=10)
    assert isinstance(held, Hold)
    assert "highest target in the last 30s (no boot observed yet) is 4" in held.reason
    assert held.numbers["window_max"] == 4
    # A dependent burst within the window finds its workers still there.
    also_held = policy.decide(observe(target=2, running=running), now=29)
    assert isinstance(also_held, Hold)
    # Once the high target left the window, the highest remaining target (2) wins.
    down = policy.decide(observe(target=1, running=running), now=31)
    assert isinstance(down, ScaleDown) and len(down.names) == 2


def test_scale_down_releases_the_schedulers_cheapest_idle_workers() -> None:
    policy = adaptive(scale_down_window=0)
    running = [worker("busy", processing=3), worker("heavy", stored=10), worker("light")]
    seen = observe(target=1, running=running, ranking=["light", "heavy", "busy"])
    decision = policy.decide(seen, now=0)
    assert isinstance(decision, ScaleDown)
    assert decision.names == ("light", "heavy")


def test_busy_workers_are_not_released() -> None:
    policy = adaptive(scale_down_window=0)
    running = [worker("a", processing=1), worker("b", processing=2)]
    decision = policy.decide(observe(target=1, running=running), now=0)
    assert isinstance(decision, Hold) and "no idle worker" in decision.reason


def test_pending_protection_keeps_a_young_scale_up() -> None:
    policy = adaptive(scale_down_window=0)
    up = policy.decide(observe(target=4), now=0)
    assert isinstance(up, ScaleUp) and up.n == 4
    # The burst vanished before the workers connected: keep them while young.
    pending = ["p0", "p1", "p2", "p3"]
    held = policy.decide(observe(target=0, pending=pending, requested_at=0), now=30)
    assert isinstance(held, Hold) and "still pending" in held.reason
    assert held.numbers["protected"] == 4
    # Past the startup timeout the protection ends; pending ones go first, newest first.
    later = observe(target=0, pending=pending, requested_at=0)
    down = policy.decide(later, now=61)
    assert isinstance(down, ScaleDown) and set(down.names) == set(pending)


def test_pending_instances_are_cancelled_before_running_workers() -> None:
    policy = adaptive(scale_down_window=0)
    seen = Observation(
        workers=(worker("old"),),
        instances=(
            Instance("old", InstanceState.RUNNING, 0),
            Instance("new", InstanceState.PENDING, 5),
        ),
        adaptive_target=1,
        tasks_processing=0,
        workers_to_close=("old",),
    )
    decision = policy.decide(seen, now=500)
    assert isinstance(decision, ScaleDown) and decision.names == ("new",)


def test_memory_rule_scales_up_past_the_threshold() -> None:
    policy = adaptive(memory_threshold=0.5)
    running = [worker("a", stored=int(0.9 * GiB)), worker("b", stored=int(0.6 * GiB))]
    decision = policy.decide(observe(target=2, running=running), now=0)
    # 1.5 GiB stored must stay under half of each 1 GiB limit: 3 workers.
    assert isinstance(decision, ScaleUp) and decision.n == 3
    assert decision.numbers["memory_target"] == 3
    assert "memory" in decision.reason


def test_memory_below_threshold_changes_nothing() -> None:
    policy = adaptive(memory_threshold=0.5)
    running = [worker("a", stored=int(0.4 * GiB)), worker("b", stored=int(0.4 * GiB))]
    decision = policy.decide(observe(target=2, running=running), now=0)
    assert isinstance(decision, Hold)


def test_workers_the_backend_did_not_launch_are_never_released() -> None:
    policy = adaptive(scale_down_window=0)
    seen = Observation(
        workers=(worker("mine"), worker("stranger")),
        instances=(Instance("mine", InstanceState.RUNNING, 0),),
        adaptive_target=0,
        tasks_processing=0,
        workers_to_close=("stranger", "mine"),
    )
    decision = policy.decide(seen, now=0)
    assert isinstance(decision, ScaleDown) and decision.names == ("mine",)


def test_every_decision_explains_itself_in_one_line() -> None:
    policy = adaptive()
    line = describe(policy.decide(observe(target=3), now=0))
    assert line.startswith("scale up to 3: scheduler wants more workers [target=3")
    assert "\n" not in line


def boot_one(
    policy: Policy, *, requested_at: float, pending_at: float, registered_at: float
) -> None:
    """Show the policy one worker pending at ``pending_at`` and registered at ``registered_at``."""
    name = f"boot-{requested_at}"
    pending = Observation(
        workers=(),
        instances=(Instance(name, InstanceState.PENDING, requested_at),),
        adaptive_target=1,
        tasks_processing=0,
    )
    policy.decide(pending, now=pending_at)
    policy.decide(
        Observation(
            workers=(worker(name),),
            instances=(Instance(name, InstanceState.RUNNING, requested_at),),
            adaptive_target=1,
            tasks_processing=0,
        ),
        now=registered_at,
    )


def test_boot_time_is_the_midpoint_of_the_ticks_around_registration() -> None:
    policy = adaptive(minimum=1)
    assert policy.boots.estimate is None
    boot_one(policy, requested_at=100.0, pending_at=105.0, registered_at=106.0)
    assert policy.boots.samples == (5.5,)
    # Requested and registered between two ticks: half its age.
    seen = Observation(
        workers=(worker("fast"),),
        instances=(Instance("fast", InstanceState.RUNNING, 106.5),),
        adaptive_target=1,
        tasks_processing=0,
    )
    policy.decide(seen, now=107.0)
    assert policy.boots.samples == (5.5, 0.25)


def test_workers_registered_before_the_first_tick_are_not_boot_samples() -> None:
    policy = adaptive(minimum=1)
    running = [worker("old")]
    policy.decide(observe(target=1, running=running), now=1000)
    policy.decide(observe(target=1, running=running), now=1001)
    assert policy.boots.samples == ()
    assert policy.scale_down_window == 60


def test_scale_down_window_is_twice_the_observed_boot_time() -> None:
    policy = adaptive()
    boot_one(policy, requested_at=0.0, pending_at=6.0, registered_at=7.0)  # boot 6.5 s
    assert policy.scale_down_window == 13.0
    running = [worker(n) for n in "abcd"]
    policy.decide(observe(target=4, running=running), now=20)
    held = policy.decide(observe(target=1, running=running), now=32)
    assert isinstance(held, Hold)
    assert "in the last 13s (2x the observed boot time) is 4" in held.reason
    assert held.numbers["window_s"] == 13 and held.numbers["boot_s"] == 6.5
    # 13.5 s after the last high target, two boot times have passed: release.
    down = policy.decide(observe(target=1, running=running), now=33.5)
    assert isinstance(down, ScaleDown) and len(down.names) == 3


def test_a_worker_that_reconnects_is_not_a_boot_sample() -> None:
    policy = adaptive(minimum=1)
    boot_one(policy, requested_at=0.0, pending_at=5.0, registered_at=6.0)
    name = "boot-0.0"
    gone = Observation(
        workers=(),
        instances=(Instance(name, InstanceState.RUNNING, 0.0),),
        adaptive_target=1,
        tasks_processing=0,
    )
    policy.decide(gone, now=500)
    back = observe(target=1, running=[worker(name)])
    policy.decide(back, now=501)
    assert policy.boots.samples == (5.5,)


def test_the_window_follows_the_median_of_recent_boots() -> None:
    policy = adaptive()
    for i, boot in enumerate([6.0, 30.0, 8.0]):
        start = 100.0 * i
        boot_one(
            policy,
            requested_at=start,
            pending_at=start + boot - 0.5,
            registered_at=start + boot + 0.5,
        )
    assert policy.boots.estimate == 8.0
    assert policy.scale_down_window == 16.0


def test_window_is_bounded_by_the_floor_and_by_scale_down_window() -> None:
    fast = adaptive()  # default floor 5 s
    boot_one(fast, requested_at=0.0, pending_at=0.5, registered_at=1.5)
    assert fast.scale_down_window == 5.0
    slow = adaptive(scale_down_window=30)
    boot_one(slow, requested_at=0.0, pending_at=59.5, registered_at=60.5)
    assert slow.scale_down_window == 30.0
    fixed = adaptive(scale_down_window=20, scale_down_window_min=20)
    boot_one(fixed, requested_at=0.0, pending_at=1.5, registered_at=2.5)
    assert fixed.scale_down_window == 20.0


def test_pending_protection_outlasts_a_short_boot_window() -> None:
    policy = adaptive(maximum=4)
    boot_one(policy, requested_at=0.0, pending_at=0.5, registered_at=1.5)  # window: floor 5 s
    running = [worker("boot-0.0")]
    up = policy.decide(observe(target=4, running=running), now=10)
    assert isinstance(up, ScaleUp) and up.n == 4
    # Twenty seconds later the target fell and the three are still booting: kept.
    later = observe(target=1, running=running, pending=["p1", "p2", "p3"], requested_at=10)
    held = policy.decide(later, now=30)
    assert isinstance(held, Hold) and "still pending" in held.reason


def test_scale_down_window_min_above_the_window_names_its_key() -> None:
    with pytest.raises(SettingsError) as raised:
        adaptive(scale_down_window=10, scale_down_window_min=20)
    assert raised.value.key == "policy.options.scale_down_window_min"


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"growth_factor": 1}, "policy.options.growth_factor"),
        ({"growth_floor": 0}, "policy.options.growth_floor"),
        ({"scale_down_window": -1}, "policy.options.scale_down_window"),
        ({"scale_down_window_min": -1}, "policy.options.scale_down_window_min"),
        ({"memory_threshold": 1.5}, "policy.options.memory_threshold"),
        ({"target_duration": "5s"}, "policy.options.target_duration"),
        ({"colour": "red"}, "policy.options.colour"),
    ],
)
def test_bad_options_name_their_key(options: dict[str, object], key: str) -> None:
    with pytest.raises(SettingsError) as raised:
        adaptive(**options)
    assert raised.value.key == key
