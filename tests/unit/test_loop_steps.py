"""The sidecar's loop and the simulator's driver take the same decisions on the same observations.

Both call the step functions of :mod:`dask_deploy.steps`; this test feeds one scripted sequence
of observations to a :class:`~dask_deploy.scaler.Scaler` (through an in-memory scheduler link
and backend) and to the simulator's :class:`~dask_deploy.simulate.PolicyDriver` (through a
stand-in of the simulated cluster), then compares what each decided, what the policy was shown,
what was found stale and which workers each asked the scheduler to retire. The script covers
the steps the simulator used to skip or do differently: the startup clock of a restarted
loop, the filter of workers already retiring, the hold after a refused retirement and the
invariants (a target past the maximum, a worker the backend never launched).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from dask_deploy import (
    Decision,
    Hold,
    Instance,
    InstanceState,
    Observation,
    Policy,
    PolicySettings,
    ScaleDown,
    ScaleUp,
    WorkerSnapshot,
)
from dask_deploy.config import LoopSettings
from dask_deploy.observe import SchedulerState
from dask_deploy.policy import load_policy_factory
from dask_deploy.scaler import Scaler
from dask_deploy.simulate import PolicyDriver, SimulationSettings
from dask_deploy.steps import Bounds, DecisionRecord

RUNNING, PENDING = InstanceState.RUNNING, InstanceState.PENDING
STARTUP_TIMEOUT = 10.0
BOUNDS = Bounds(minimum=0, maximum=4)


def worker(name: str, status: str = "running") -> WorkerSnapshot:
    return WorkerSnapshot(name, f"tcp://{name}", status, 1, 0, 0, 0)


@dataclass(frozen=True)
class Moment:
    """One tick of the script: what is observed, what the scripted policy answers."""

    now: float
    observation: Observation
    answer: Decision
    refuse: frozenset[str] = frozenset()
    """Workers the scheduler will not retire at this tick."""


def moment(
    now: float,
    instances: tuple[Instance, ...],
    workers: tuple[WorkerSnapshot, ...],
    answer: Decision,
    *,
    target: int,
    refuse: Collection[str] = (),
) -> Moment:
    names = tuple(w.name for w in workers)
    observation = Observation(workers, instances, target, 0, 0, 0, names)
    return Moment(now, observation, answer, frozenset(refuse))


A, B = Instance("a", RUNNING, 0.0), Instance("b", RUNNING, 0.0)
C = Instance("c", PENDING, 95.0)  # requested before this loop started (at 100)
SCRIPT = (
    # asks past the maximum: clipped to 4
    moment(100, (A, B, C), (worker("a"), worker("b"), worker("x")), ScaleUp(14, "more"), target=3),
    # names a worker someone else started, and b, which the scheduler refuses to retire
    moment(
        101,
        (A, B, C),
        (worker("a"), worker("b"), worker("x")),
        ScaleDown(("x", "b"), "x and b"),
        target=3,
        refuse={"b"},
    ),
    # b again, one second after the refusal: held
    moment(102, (A, B, C), (worker("a"), worker("b")), ScaleDown(("b",), "b"), target=2),
    # c never connected: stale 10 s after the loop started (not after its request at 95)
    moment(111, (A, B, C), (worker("a"), worker("b")), Hold("fine"), target=2),
    # a is retiring: the policy is not shown it, and may not name it
    moment(
        112,
        (A, B),
        (worker("a", "closing_gracefully"), worker("b")),
        ScaleDown(("a",), "a"),
        target=1,
    ),
    # the refusal of b is 39 s old: asked again, and retired
    moment(140, (B,), (worker("b"),), ScaleDown(("b",), "b at last"), target=0),
)


class Scripted:
    """A policy that answers from the script and notes what it was shown."""

    target_duration = None

    def __init__(self) -> None:
        self.shown: list[Observation] = []
        self._answers = iter(m.answer for m in SCRIPT)

    def decide(self, observation: Observation, now: float) -> Decision:
        self.shown.append(observation)
        return next(self._answers)


class Noting:
    """A registry policy, with what it was shown noted."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.shown: list[Observation] = []

    @property
    def target_duration(self) -> float | None:
        return self.policy.target_duration

    def decide(self, observation: Observation, now: float) -> Decision:
        self.shown.append(observation)
        return self.policy.decide(observation, now)


def make_policy(name: str) -> Scripted | Noting:
    if name == "scripted":
        return Scripted()
    settings = PolicySettings(
        minimum=BOUNDS.minimum,
        maximum=BOUNDS.maximum,
        startup_timeout=STARTUP_TIMEOUT,
        options={"scale_down_window": 0} if name == "adaptive" else {"workers": 1},
    )
    return Noting(load_policy_factory(name)(settings))


@dataclass
class Outcome:
    records: list[DecisionRecord] = field(default_factory=list)
    stale: list[list[str]] = field(default_factory=list)
    retire_calls: list[list[str]] = field(default_factory=list)
    scale_ups: list[int] = field(default_factory=list)


# -- the sidecar's loop, on a scripted scheduler and backend ----------------------------------
class ScriptedWorld:
    """Scheduler link and backend at once: both report the current moment of the script."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.now: Moment = SCRIPT[0]

    async def observe(self, target_duration: float | None) -> SchedulerState:
        o = self.now.observation
        return SchedulerState(
            o.workers,
            o.adaptive_target,
            o.tasks_processing,
            o.tasks_queued,
            o.tasks_unrunnable,
            o.workers_to_close,
        )

    async def worker_names(self) -> frozenset[str]:
        return self.now.observation.registered_names

    async def retire(self, names: Collection[str]) -> frozenset[str]:
        self.outcome.retire_calls.append(sorted(names))
        return frozenset(names) - self.now.refuse

    async def instances(self) -> list[Instance]:
        return list(self.now.observation.instances)

    async def scale_up(self, n: int) -> None:
        self.outcome.scale_ups.append(n)

    async def scale_down(self, names: Collection[str]) -> None:
        pending = {i.name for i in self.now.observation.pending}
        if set(names) <= pending and self.now.now - 100 > STARTUP_TIMEOUT:
            self.outcome.stale.append(sorted(names))

    async def close(self) -> None:
        pass


async def run_loop(policy: Policy, name: str) -> Outcome:
    outcome = Outcome()
    world = ScriptedWorld(outcome)
    scaler = Scaler(
        scheduler=world,
        backend=world,
        policy=policy,
        policy_name=name,
        bounds=BOUNDS,
        settings=LoopSettings(interval=1, startup_timeout=STARTUP_TIMEOUT),
        clock=lambda: world.now.now,
    )
    for step in SCRIPT:
        world.now = step
        result = await scaler.tick()
        assert result.ok and result.record is not None
        outcome.records.append(result.record)
    return outcome


# -- the simulator's driver, on a stand-in of the simulated cluster ---------------------------
class ScriptedCluster:
    """What PolicyDriver uses of a SimCluster, reporting the current moment of the script."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.moment = SCRIPT[0]
        self.record = SimpleNamespace(decisions=outcome.records)

    @property
    def now(self) -> float:
        return self.moment.now

    @property
    def live(self) -> dict[str, SimpleNamespace]:
        pending = {i.name for i in self.moment.observation.pending}
        return {
            i.name: SimpleNamespace(pending=i.name in pending)
            for i in self.moment.observation.requested
        }

    def scale_up(self, n: int) -> None:
        self.outcome.scale_ups.append(n)

    def remove(self, names: list[str]) -> None:
        if names and not set(names) <= {i.name for i in self.moment.observation.pending}:
            raise AssertionError(f"removed running workers {names} without retiring them")
        if names and self.now - 100 > STARTUP_TIMEOUT:
            self.outcome.stale.append(sorted(names))

    def retire(self, names: list[str]) -> tuple[list[str], float]:
        self.outcome.retire_calls.append(sorted(names))
        return [n for n in names if n not in self.moment.refuse], self.now

    def schedule_tick(self, at: float) -> None:
        pass


def run_simulator(policy: Policy, name: str) -> Outcome:
    outcome = Outcome()
    cluster = ScriptedCluster(outcome)
    settings = SimulationSettings(
        policy=name,
        minimum=BOUNDS.minimum,
        maximum=BOUNDS.maximum,
        startup_timeout=STARTUP_TIMEOUT,
        interval=1,
    )
    driver = PolicyDriver(policy, settings, cluster)  # type: ignore[arg-type]
    driver.builder = SimpleNamespace(build=lambda _: cluster.moment.observation)  # type: ignore[assignment]
    for step in SCRIPT:
        cluster.moment = step
        driver(cluster)  # type: ignore[arg-type]
    return outcome


@pytest.mark.parametrize("name", ["scripted", "adaptive", "fixed"])
async def test_the_loop_and_the_simulator_decide_alike_on_the_same_observations(
    name: str,
) -> None:
    loop_policy, simulator_policy = make_policy(name), make_policy(name)
    loop = await run_loop(loop_policy, name)
    simulated = run_simulator(simulator_policy, name)
    assert loop.records == simulated.records
    assert loop_policy.shown == simulator_policy.shown
    assert loop.stale == simulated.stale
    assert loop.retire_calls == simulated.retire_calls
    assert loop.scale_ups == simulated.scale_ups


async def test_the_script_exercises_every_step() -> None:
    """What the scripted policy's run decided, tick by tick (so the comparison means something)."""
    policy = Scripted()
    outcome = await run_loop(policy, "scripted")
    kinds = [(r.kind, r.target, r.released) for r in outcome.records]
    assert kinds == [
        ("up", 4, ()),  # 14 clipped to the maximum
        ("down", 2, ("b",)),  # x refused: not ours
        ("hold", 3, ()),  # b refused a second ago
        ("hold", 2, ()),  # c removed as stale first: 2 requested
        ("hold", 1, ()),  # a retiring: hidden, and may not be named
        ("down", 0, ("b",)),  # asked again after the refusal expired
    ]
    assert outcome.stale == [["c"]]
    assert outcome.retire_calls == [["b"], ["b"]]
    assert [len(o.requested) for o in policy.shown] == [3, 3, 3, 2, 1, 1]
