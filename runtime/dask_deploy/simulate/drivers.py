"""What the control loop does each tick, on the model: the policy drivers of the simulator.

:class:`PolicyDriver` runs a policy of the registry exactly as :mod:`dask_deploy.scaler`
does; :class:`AdaptiveDriver` models ``distributed.deploy.Adaptive`` for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import steps
from ..contract import (
    Instance,
    InstanceState,
    Observation,
    Policy,
    PolicySettings,
    ScaleDown,
    ScaleUp,
    WorkerSnapshot,
)
from ..steps import Bounds, DecisionRecord, LoopMemory
from .engine import ModelSettings, SimCluster

DISTRIBUTED_ADAPTIVE = "distributed-adaptive"
"""The model of ``distributed.deploy.Adaptive`` with its defaults, for comparison."""


@dataclass(frozen=True)
class SimulationSettings:
    """One simulated run: the policy, its limits and the model of the cluster."""

    policy: str = "adaptive"
    minimum: int = 1
    maximum: int = 6
    options: dict[str, object] = field(default_factory=dict)
    interval: float = 1.0
    startup_timeout: float = 300.0
    model: ModelSettings = field(default_factory=ModelSettings)
    warm_start: bool = True
    """Begin with the workers the policy keeps when idle already registered."""
    tick_phase: float = 0.5
    """Where the trace starts within the loop's interval: the first tick after the start
    comes ``tick_phase * interval`` seconds in. Work arrives at a random phase of a real
    loop; half an interval is the mean, and keeps ticks off the whole seconds at which the
    traces' tasks start and end (a tick racing a completion to the millisecond would
    decide the scheduler's estimate, and with it the scale-up, by chance)."""


class _ObservationBuilder:
    """Builds observations from the model, reusing unchanged snapshots (10 000 workers)."""

    def __init__(self, cluster: SimCluster) -> None:
        self.cluster = cluster
        self._snapshots: dict[str, tuple[tuple[int, int, bool], WorkerSnapshot]] = {}
        self._instances: dict[str, tuple[InstanceState, Instance]] = {}

    def build(self, target_duration: float | None) -> Observation:
        cluster = self.cluster
        settings = cluster.settings
        workers: list[WorkerSnapshot] = []
        instances: list[Instance] = []
        snapshots, cached_instances = self._snapshots, self._instances
        for worker in cluster.live.values():
            state = InstanceState.RUNNING if worker.registered else InstanceState.PENDING
            cached = cached_instances.get(worker.name)
            if cached is None or cached[0] is not state:
                instance = Instance(worker.name, state, worker.requested_at)
                cached_instances[worker.name] = (state, instance)
            else:
                instance = cached[1]
            instances.append(instance)
            if not worker.registered:
                continue
            key = (worker.running, worker.stored_bytes, worker.retiring)
            snap = snapshots.get(worker.name)
            if snap is None or snap[0] != key:
                snapshot = WorkerSnapshot(
                    name=worker.name,
                    address=f"sim://{worker.name}",
                    status="closing_gracefully" if worker.retiring else "running",
                    threads=settings.threads,
                    memory_limit=settings.memory_limit,
                    stored_bytes=worker.stored_bytes,
                    processing=worker.running,
                )
                snapshots[worker.name] = (key, snapshot)
            else:
                snapshot = snap[1]
            workers.append(snapshot)
        duration = 5.0 if target_duration is None else target_duration
        return Observation(
            workers=tuple(workers),
            instances=tuple(instances),
            adaptive_target=cluster.adaptive_target(duration),
            tasks_processing=cluster.processing,
            tasks_queued=cluster.queued,
            tasks_unrunnable=cluster.unrunnable,
            workers_to_close=tuple(cluster.workers_to_close()),
            work_seconds=cluster.work_seconds(),
        )


class PolicyDriver:
    """What ``dask_deploy.scaler`` does each tick, on the model: observe, decide, act.

    The decision is taken by the loop's own step functions (:mod:`dask_deploy.steps`): the
    same staleness clock, the same filter of workers already retiring, the same invariants and
    the same hold after a refused retirement as the sidecar.
    """

    def __init__(self, policy: Policy, settings: SimulationSettings, cluster: SimCluster) -> None:
        self.policy = policy
        self.settings = settings
        self.bounds = Bounds(settings.minimum, settings.maximum)
        self.builder = _ObservationBuilder(cluster)
        self.memory: LoopMemory | None = None
        self.ticks = 0

    def __call__(self, cluster: SimCluster) -> None:
        self.ticks += 1
        now = cluster.now
        seen = self.builder.build(self.policy.target_duration)
        memory = self.memory or LoopMemory(started_at=now)
        memory, stale = steps.find_stale(memory, seen, now, self.settings.startup_timeout)
        stale_names = [i.name for i in stale]
        cluster.remove(stale_names)
        observation = steps.without_instances(seen, stale_names)
        step = steps.decide(
            memory, observation, now, self.policy, self.bounds, self.settings.policy
        )
        self.memory = step.memory
        cluster.record.decisions.append(step.record)
        decision = step.decision
        next_tick = now + self.settings.interval
        if isinstance(decision, ScaleUp):
            cluster.scale_up(decision.n)
        elif isinstance(decision, ScaleDown):
            pending = [n for n in decision.names if n in cluster.live and cluster.live[n].pending]
            cluster.remove(pending)  # cancel pending instances first
            cancelled = set(pending)
            others = [n for n in decision.names if n not in cancelled]
            if others:
                retired, finish = cluster.retire(others)
                done = set(retired)
                kept = [n for n in others if n not in done]
                self.memory = steps.remember_refused(self.memory, kept, now)
                next_tick = max(next_tick, finish)
        cluster.schedule_tick(next_tick)


class AdaptiveDriver:
    """``distributed.deploy.Adaptive`` with its defaults (AdaptiveCore), on the model.

    Like upstream it scales down after ``wait_count`` (3) agreeing ticks, asks the
    scheduler to retire, then removes every chosen worker whether retired or not.
    """

    def __init__(self, settings: SimulationSettings, wait_count: int = 3) -> None:
        self.settings = settings
        self.wait_count = wait_count
        self.close_counts: dict[str, int] = {}
        self.ticks = 0

    def __call__(self, cluster: SimCluster) -> None:
        self.ticks += 1
        now = cluster.now
        target = min(
            max(cluster.adaptive_target(5.0), self.settings.minimum), self.settings.maximum
        )
        plan = len(cluster.live)
        next_tick = now + self.settings.interval
        if target > plan:
            self.close_counts.clear()
            cluster.record.decisions.append(
                DecisionRecord(now, "up", target, "adaptive_target above plan")
            )
            cluster.scale_up(target)
        elif target == plan:
            self.close_counts.clear()
        else:
            not_arrived = [w.name for w in cluster.live.values() if w.pending]
            to_close = set(not_arrived[: plan - target])
            if target < plan - len(to_close):
                to_close.update(cluster.workers_to_close(n=plan - target))
            firm = []
            for name in to_close:
                self.close_counts[name] = self.close_counts.get(name, 0) + 1
                if self.close_counts[name] >= self.wait_count:
                    firm.append(name)
            for name in list(self.close_counts):
                if name in firm or name not in to_close:
                    del self.close_counts[name]
            if firm:
                cluster.record.decisions.append(
                    DecisionRecord(now, "down", plan - len(firm), "wait_count", tuple(firm))
                )
                _, finish = cluster.retire(firm)
                # upstream closes the workers "more forcefully" even if not retired
                unretired = [n for n in firm if n in cluster.live and not cluster.live[n].retiring]
                cluster.remove(unretired)
                next_tick = max(next_tick, finish)
        cluster.schedule_tick(next_tick)


def make_policy(settings: SimulationSettings) -> Policy:
    """Load a policy from the registry exactly as the sidecar does."""
    from ..policy import load_policy_factory

    factory = load_policy_factory(settings.policy, key="--policy")
    return factory(
        PolicySettings(
            minimum=settings.minimum,
            maximum=settings.maximum,
            startup_timeout=settings.startup_timeout,
            options=settings.options,
        )
    )
