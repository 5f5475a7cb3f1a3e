"""The contract between the control loop and its plug-ins: everything a plug-in author needs.

A **backend** knows *how* to start and stop workers on one resource manager and nothing of
*when*; a **policy** decides *when* to scale and *which* workers to release and does no I/O.
The control loop (:mod:`dask_deploy.scaler`) joins the two and enforces what neither may
break: targets stay within ``[minimum, maximum]``, only instances the backend launched are
removed, and only workers the scheduler retired.

Everything here is frozen and typed: a policy takes an :class:`Observation` and the current
time and returns a :class:`Decision`. It reads no clock, so the same code runs in the
sidecar, in unit tests with a fake clock and in the simulator (:mod:`dask_deploy.simulate`).

Third-party packages register a :class:`BackendFactory` under the entry-point group
``dask_deploy.backends`` and a :class:`PolicyFactory` under ``dask_deploy.policies``. A
factory may publish a JSON Schema of its options as an ``options_schema`` attribute; the
loop then validates ``backend.options`` / ``policy.options`` with it before calling the
factory (see :func:`dask_deploy.options.validate`).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol, runtime_checkable

# --------------------------------------------------------------------------- backends


class InstanceState(enum.Enum):
    """Where an instance is in its life, as the resource manager reports it."""

    PENDING = "pending"
    RUNNING = "running"
    EXITED = "exited"


class ReasonKind(enum.Enum):
    """What an instance's ``reason`` says about it: why it is not running yet."""

    STUCK = "stuck"
    """It cannot start as requested, and a replacement could not either (an image that cannot
    be pulled, a job held by the batch system): log it, hold scale-up, never replace it."""
    QUEUED = "queued"
    """It waits its turn in a queue, for a reason the resource manager reports (Resources,
    Priority, a QOS limit): it will start. Not stuck, and never cancelled for being slow, which
    would only lose its place; its startup clock starts when it leaves the queue."""


@dataclass(frozen=True)
class Instance:
    """One worker the backend launched.

    ``name`` is the resource manager's own id (Marathon task id, pod name, SLURM
    job id, container name) and is also the name the Dask worker registers
    with, so the scaler can retire exactly the worker whose instance it removes.
    """

    name: str
    state: InstanceState
    requested_at: float
    """Unix time at which the backend asked the resource manager for it."""
    reason: str | None = None
    """Why the instance is not running, when the resource manager says (as cluster-autoscaler's
    ``ErrorInfo``): an image that cannot be pulled, a job held by the batch system. A stuck
    instance is a reason to log and to hold, not to recreate; ``None`` when nothing is known."""
    reason_kind: ReasonKind = ReasonKind.STUCK
    """What ``reason`` means: the instance is stuck (the default), or queued."""

    @property
    def stuck(self) -> bool:
        """It cannot start, for ``reason``: hold scale-up, do not replace it."""
        return self.reason is not None and self.reason_kind is ReasonKind.STUCK

    @property
    def queued(self) -> bool:
        """It waits in the resource manager's queue, for ``reason``: it will start."""
        return self.reason is not None and self.reason_kind is ReasonKind.QUEUED


@dataclass(frozen=True)
class BackendContext:
    """What the control loop hands a backend factory.

    ``options`` is the backend's own section of the scaler configuration; the
    factory validates it and raises :class:`dask_deploy.SettingsError` naming
    the offending key.
    """

    deployment: str
    scheduler_address: str
    options: Mapping[str, object] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """How to start, stop and list the workers of one deployment."""

    async def scale_up(self, n: int) -> None:
        """Bring the number of requested (pending or running) instances up to ``n``.

        Never lowers the count: with ``n`` at or below what is requested it does nothing.
        """

    async def scale_down(self, names: Collection[str]) -> None:
        """Remove exactly the instances with these names, and nothing else.

        Names the backend does not know are ignored, so a retried call is harmless.
        """

    async def instances(self) -> list[Instance]:
        """Every instance of this deployment that the resource manager still reports."""

    async def close(self) -> None:
        """Release clients and connections; leaves running instances alone."""


class BackendFactory(Protocol):
    def __call__(self, context: BackendContext) -> Backend: ...


def count_requested(instances: Collection[Instance]) -> int:
    """Pending and running instances: what the resource manager is holding for us."""
    return sum(1 for instance in instances if instance.state is not InstanceState.EXITED)


def by_state(instances: Collection[Instance]) -> Mapping[InstanceState, list[Instance]]:
    grouped: dict[InstanceState, list[Instance]] = {state: [] for state in InstanceState}
    for instance in instances:
        grouped[instance.state].append(instance)
    return grouped


# --------------------------------------------------------------------------- policies
Numbers = Mapping[str, float]
"""The figures behind a decision, in the order they are logged."""


@dataclass(frozen=True)
class WorkerSnapshot:
    """One worker as the scheduler sees it."""

    name: str
    address: str
    status: str
    """The scheduler's ``Status`` name: ``running``, ``paused``, ``closing_gracefully``..."""
    threads: int
    memory_limit: int
    """Bytes; 0 when the worker has no limit."""
    stored_bytes: int
    """Bytes of task results the worker holds."""
    processing: int
    """Tasks the scheduler has assigned to this worker and not yet seen finish."""

    @property
    def idle(self) -> bool:
        """No task is assigned to this worker."""
        return self.processing == 0


@dataclass(frozen=True)
class Observation:
    """One tick's snapshot of the scheduler and of what the backend launched.

    ``workers_to_close`` is the scheduler's own ranking of workers (by name) in
    the order it would release them: idle first, then by the fewest stored
    bytes. Workers running long-running tasks are never in it.

    The derived views (``requested``, ``pending``...) are computed once per observation:
    it is frozen, and a 10 000-worker simulation asks for them several times a tick.

    ``tasks_queued`` and ``tasks_unrunnable`` are ``None`` when the scheduler
    does not report them (it runs without the ``dask_deploy.scheduler_preload``
    module); so is ``work_seconds``, the known work: the seconds of task time queued
    and processing, from the scheduler's own per-prefix duration estimates (what its
    ``adaptive_target`` divides by the target duration).
    """

    workers: tuple[WorkerSnapshot, ...]
    instances: tuple[Instance, ...]
    adaptive_target: int
    tasks_processing: int
    tasks_queued: int | None = None
    tasks_unrunnable: int | None = None
    workers_to_close: tuple[str, ...] = ()
    work_seconds: float | None = None

    @cached_property
    def requested(self) -> tuple[Instance, ...]:
        """Instances the backend holds for us (pending or running)."""
        return tuple(i for i in self.instances if i.state is not InstanceState.EXITED)

    @cached_property
    def registered_names(self) -> frozenset[str]:
        """Names of the workers connected to the scheduler."""
        return frozenset(worker.name for worker in self.workers)

    @cached_property
    def pending(self) -> tuple[Instance, ...]:
        """Requested instances whose worker has not registered with the scheduler yet."""
        registered = self.registered_names
        return tuple(i for i in self.requested if i.name not in registered)

    @cached_property
    def observed(self) -> tuple[WorkerSnapshot, ...]:
        """Workers of our instances that are connected to the scheduler."""
        ours = {instance.name for instance in self.requested}
        return tuple(worker for worker in self.workers if worker.name in ours)

    @cached_property
    def unknown_workers(self) -> tuple[WorkerSnapshot, ...]:
        """Connected workers the backend did not launch: never touched by the scaler."""
        ours = {instance.name for instance in self.instances}
        return tuple(worker for worker in self.workers if worker.name not in ours)


@dataclass(frozen=True)
class ScaleUp:
    """Bring the number of requested instances up to ``n``."""

    n: int
    reason: str
    numbers: Numbers = field(default_factory=dict)
    kind = "up"


@dataclass(frozen=True)
class ScaleDown:
    """Release exactly these workers: pending instances are cancelled, the others retired."""

    names: tuple[str, ...]
    reason: str
    numbers: Numbers = field(default_factory=dict)
    kind = "down"


@dataclass(frozen=True)
class Hold:
    """Change nothing this tick."""

    reason: str
    numbers: Numbers = field(default_factory=dict)
    kind = "hold"


Decision = ScaleUp | ScaleDown | Hold


def describe(decision: Decision) -> str:
    """The one log line that explains a decision.

    >>> describe(ScaleUp(4, "3 tasks queued", {"target": 4, "requested": 0}))
    'scale up to 4: 3 tasks queued [target=4 requested=0]'
    """
    numbers = " ".join(f"{key}={_format_number(value)}" for key, value in decision.numbers.items())
    suffix = f" [{numbers}]" if numbers else ""
    if isinstance(decision, ScaleUp):
        head = f"scale up to {decision.n}"
    elif isinstance(decision, ScaleDown):
        head = f"scale down {', '.join(decision.names)}"
    else:
        head = "hold"
    return f"{head}: {decision.reason}{suffix}"


def _format_number(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3g}"


@dataclass(frozen=True)
class PolicySettings:
    """The ``policy`` section of the scaler configuration plus the loop's startup timeout."""

    minimum: int = 0
    maximum: int = 10
    startup_timeout: float = 300.0
    options: Mapping[str, object] = field(default_factory=dict)


class Policy(Protocol):
    """Decides *when* to scale and *which* workers to release; never does I/O.

    A policy instance may keep memory between ticks (for example the targets
    seen in a stabilization window); that memory is typed and only ever changed
    by :meth:`decide`.
    """

    @property
    def target_duration(self) -> float | None:
        """Seconds passed to the scheduler's ``adaptive_target``; ``None`` for its default."""
        ...

    def decide(self, observation: Observation, now: float) -> Decision:
        """The decision for this tick; ``now`` is the caller's clock in seconds."""
        ...


class PolicyFactory(Protocol):
    def __call__(self, settings: PolicySettings) -> Policy: ...


__all__ = [
    "Backend",
    "BackendContext",
    "BackendFactory",
    "Decision",
    "Hold",
    "Instance",
    "InstanceState",
    "Numbers",
    "Observation",
    "Policy",
    "PolicyFactory",
    "PolicySettings",
    "ReasonKind",
    "ScaleDown",
    "ScaleUp",
    "WorkerSnapshot",
    "by_state",
    "count_requested",
    "describe",
]
