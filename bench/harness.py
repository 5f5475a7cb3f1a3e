"""Real runs: a fresh scheduler, real `dask worker` processes, one policy, one trace.

One run = start a scheduler in this process, warm the cluster up to the policy's idle
size, replay the trace with a client (sleeping tasks), drive the policy every second,
and record what happened in a :class:`dask_deploy.simulate.engine.RunRecord` (the same
record the simulator fills, so both are measured by the same code).

Policies:
- ``adaptive`` / ``fixed``: our policies (``dask_deploy.policy``) driven by a loop that
  does what the sidecar does: observe, decide, cancel pending instances first, retire
  through the scheduler and remove only what it retired.
- ``distributed-adaptive``: ``distributed.deploy.Adaptive`` with its defaults, driving
  the same backend through a thin ``Cluster``-like shim.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from distributed import Client, Scheduler, wait
from distributed.core import Status, rpc
from distributed.deploy.adaptive import Adaptive
from distributed.diagnostics.plugin import SchedulerPlugin

from dask_deploy import scheduler_preload
from dask_deploy.backends import BackendContext, Instance, InstanceState, local
from dask_deploy.config import LoopSettings
from dask_deploy.metrics import ScalerMetrics
from dask_deploy.observe import RpcScheduler
from dask_deploy.policy import (
    Decision,
    Observation,
    Policy,
    PolicySettings,
    ScaleUp,
    load_policy_factory,
)
from dask_deploy.scaler import Scaler
from dask_deploy.simulate import SimulationSettings
from dask_deploy.simulate.engine import RunRecord
from dask_deploy.simulate.trace import Trace
from dask_deploy.simulate.workload import BOOT_DELAY_FILE, sleep_task
from dask_deploy.steps import Bounds, DecisionRecord
from dask_deploy.steps import record as record_decision

DISTRIBUTED_ADAPTIVE = "distributed-adaptive"
SCALER_HANDLERS = (
    "identity",
    "processing",
    scheduler_preload.SUMMARY_HANDLER,
    scheduler_preload.COUNTS_HANDLER,
    "adaptive_target",
    "workers_to_close",
    "retire_workers",
)
"""Scheduler RPC handlers a scaler calls; the time spent in them is the scaler's cost."""
MEMORY_LIMIT = 2 * 1024**3
TICK_PHASE = SimulationSettings().tick_phase
"""The trace starts this fraction of an interval after the policy loop, as in the model."""


@dataclass(frozen=True)
class PolicySpec:
    """A named policy of the benchmark: registry name and options."""

    label: str
    policy: str
    options: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class HarnessSettings:
    minimum: int = 1
    maximum: int = 6
    threads: int = 1
    boot_delay: float = 5.0
    interval: float = 1.0
    run_timeout: float = 120.0
    warmup_timeout: float = 60.0


# -- the backend: the local backend, with an injected boot delay and a record of exits -------
class RecordedLocalWorkers:
    """``dask_deploy.backends.local`` (real ``dask worker`` processes), recording lifetimes.

    Workers start with ``--preload dask_deploy.simulate.workload``, which sleeps for the
    seconds written in :attr:`delay_file` before registering: the injected boot delay.
    """

    def __init__(self, scheduler: Scheduler, deployment: str, settings: HarnessSettings) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="dask-deploy-bench-")
        self.delay_file = Path(self._dir.name) / "boot-delay"
        self.state_dir = Path(self._dir.name) / "state"
        self.set_boot_delay(0.0)
        os.environ[BOOT_DELAY_FILE] = str(self.delay_file)
        self.inner = local.create(
            BackendContext(
                deployment=deployment,
                scheduler_address=scheduler.address,
                options={
                    "state_dir": str(self.state_dir),
                    "threads": settings.threads,
                    "memory_limit": str(MEMORY_LIMIT),
                    "worker_args": ["--preload", "dask_deploy.simulate.workload"],
                },
            )
        )
        self.requested: dict[str, float] = {}
        self.exited: dict[str, float] = {}
        self._live: set[str] = set()
        # The sampler, the scaler (or Adaptive's shim) all call the backend; the local backend
        # works in a thread and is not safe to call from two threads at once, so the harness
        # makes one call at a time. Two listings reap the same exited child (KeyError); a
        # listing during a scale-up finds the new worker's record before its process and
        # reports it exited (the run recorded a worker that ran 20 s as exited 0.1 s after
        # its request: 20.6 real worker-seconds against 44 simulated).
        self._calls = asyncio.Lock()

    def set_boot_delay(self, seconds: float) -> None:
        self.delay_file.write_text(str(seconds))

    def live(self) -> set[str]:
        """Names requested and not seen exited, as of the last call into the backend."""
        return set(self._live)

    def _note(self, instances: list[Instance]) -> None:
        now = time.time()
        seen = set()
        for instance in instances:
            self.requested.setdefault(instance.name, instance.requested_at)
            if instance.state is InstanceState.EXITED:
                self.exited.setdefault(instance.name, now)
            else:
                seen.add(instance.name)
        for name in self._live - seen:
            self.exited.setdefault(name, now)
        self._live = {n for n in seen if n not in self.exited}

    async def scale_up(self, n: int) -> None:
        # The backend's own records (one JSON file per requested instance) name the new
        # workers and their request times at once, without a listing of /proc.
        async with self._calls:
            await self.inner.scale_up(n)
        for record in self.state_dir.glob("*.json"):
            if record.stem not in self.requested:
                self.requested[record.stem] = json.loads(record.read_text())["requested_at"]
                self._live.add(record.stem)

    async def scale_down(self, names: Collection[str]) -> None:
        async with self._calls:
            await self.inner.scale_down(names)
        now = time.time()
        for name in names:
            if name in self.requested:
                self.exited.setdefault(name, now)
        await self.instances()

    async def instances(self) -> list[Instance]:
        async with self._calls:
            instances = await self.inner.instances()
        self._note(instances)
        return instances

    async def close(self) -> None:
        async with self._calls:
            names = [i.name for i in await self.inner.instances()]
        await self.inner.scale_down(names)
        await self.inner.close()
        os.environ.pop(BOOT_DELAY_FILE, None)
        self._dir.cleanup()


# -- scheduler instrumentation -------------------------------------------------------------
class _Recorder(SchedulerPlugin):
    """Worker registrations, task executions and lost keys, from the scheduler's own events."""

    def __init__(self, held_prefixes: set[str]) -> None:
        self.registered: dict[str, float] = {}
        self.executions: dict[str, int] = {}
        self.held_prefixes = held_prefixes

    @property
    def keys_lost(self) -> int:
        """Held results computed more than once: they were lost with a worker."""
        return sum(
            1
            for key, count in self.executions.items()
            if count > 1 and key.rsplit("-", 1)[0] in self.held_prefixes
        )

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        name = str(scheduler.workers[worker].name)
        self.registered.setdefault(name, time.time())

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if start == "processing" and finish == "memory":
            self.executions[str(key)] = self.executions.get(str(key), 0) + 1


def _time_handlers(scheduler: Scheduler, names: Collection[str]) -> list[float]:
    """Wrap the scheduler's RPC handlers ``names``; the list collects seconds spent in them."""
    spent: list[float] = []
    for name in names:
        original = scheduler.handlers[name]

        def make(original: Callable[..., Any]) -> Callable[..., Any]:
            async def timed(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    result = original(*args, **kwargs)
                    if asyncio.iscoroutine(result):
                        result = await result
                    return result
                finally:
                    spent.append(time.perf_counter() - started)

            return timed

        scheduler.handlers[name] = make(original)
    return spent


# -- drivers ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tick:
    """What the policy saw at one tick and what it decided (to set real and simulated runs
    side by side: ``bench/agreement.py``)."""

    at: float
    observation: Observation
    decision: Decision

    def row(self, t0: float = 0.0) -> str:
        """One line: the observation's numbers and the decision with the policy's numbers."""
        o = self.observation
        numbers = self.decision.numbers
        work = "-" if o.work_seconds is None else f"{o.work_seconds:5.2f}"
        boot = numbers.get("boot_s")
        done_in = numbers.get("work_done_in_s")
        return (
            f"{self.at - t0:6.2f} reg {len(o.workers)} pend {len(o.pending)} "
            f"proc {o.tasks_processing} queued {o.tasks_queued} work {work} "
            f"target {o.adaptive_target} boot {'-' if boot is None else f'{boot:.2f}'} "
            f"done_in {'-' if done_in is None else f'{done_in:.2f}'} | "
            f"{type(self.decision).__name__} {self.decision.reason}"
        )


class RecordingPolicy:
    """Our policy, unchanged, with every decision noted for the metrics and every tick's
    observation kept beside it (:class:`Tick`)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.decisions: list[DecisionRecord] = []
        self.ticks: list[Tick] = []

    @property
    def target_duration(self) -> float | None:
        return self.policy.target_duration

    def decide(self, observation: Observation, now: float) -> Decision:
        decision = self.policy.decide(observation, now)
        self.decisions.append(record_decision(now, decision, observation))
        self.ticks.append(Tick(now, observation, decision))
        return decision


def make_policy(spec: PolicySpec, settings: HarnessSettings) -> Policy:
    factory = load_policy_factory(spec.policy)
    return factory(
        PolicySettings(minimum=settings.minimum, maximum=settings.maximum, options=spec.options)
    )


def idle_size(policy: Policy, minimum: int) -> int:
    """How many workers the policy keeps on an idle cluster (the warm-up size)."""
    probe = Observation(workers=(), instances=(), adaptive_target=0, tasks_processing=0)
    decision = policy.decide(probe, 0.0)
    return decision.n if isinstance(decision, ScaleUp) else minimum


class ClusterShim:
    """The part of ``distributed.deploy.Cluster`` that ``Adaptive`` uses, over our backend."""

    def __init__(self, scheduler: Scheduler, backend: RecordedLocalWorkers) -> None:
        self.scheduler = scheduler
        self.backend = backend
        self.scheduler_comm = rpc(scheduler.address)
        self.status = Status.running
        from tornado.ioloop import IOLoop

        self.loop = IOLoop.current()

    @property
    def plan(self) -> set[str]:
        return self.backend.live()

    @property
    def requested(self) -> set[str]:
        return self.backend.live()

    @property
    def observed(self) -> set[str]:
        return {str(ws.name) for ws in self.scheduler.workers.values()}

    def scale(self, n: int) -> Awaitable[None]:
        return self.backend.scale_up(n)

    def scale_down(self, workers: Collection[str]) -> Awaitable[None]:
        return self.backend.scale_down(list(workers))

    def __await__(self) -> Iterator[Any]:
        async def _refresh() -> ClusterShim:
            await self.backend.instances()
            return self

        return _refresh().__await__()


# -- one run ---------------------------------------------------------------------------------
async def run_once(
    trace: Trace,
    spec: PolicySpec,
    settings: HarnessSettings,
    run_id: str,
    tick_log: list[Tick] | None = None,
) -> RunRecord:
    """Replay ``trace`` under ``spec`` on a fresh scheduler and fresh workers.

    ``tick_log``, when given, receives our policy's ticks (times relative to the trace start).
    """
    held = {
        g.name for g in trace.groups if g.hold or any(c.depends_on == g.name for c in trace.groups)
    }
    recorder = _Recorder(held)
    scheduler = await Scheduler(host="127.0.0.1", port=0, dashboard_address=":0", dashboard=False)
    scheduler.add_plugin(recorder)
    scheduler_preload.dask_setup(scheduler)  # what `make demo` and the templates run
    handler_seconds = _time_handlers(scheduler, SCALER_HANDLERS)
    backend = RecordedLocalWorkers(scheduler, f"bench-{run_id}", settings)
    stop = asyncio.Event()
    record = RunRecord()
    driver_task: asyncio.Task[None] | None = None
    adaptive: Adaptive | None = None
    shim: ClusterShim | None = None
    policy: RecordingPolicy | None = None
    link: RpcScheduler | None = None
    samples: list[tuple[float, int, int, int, int]] = []
    tasks_left = [0]
    try:
        if spec.policy == DISTRIBUTED_ADAPTIVE:
            warm = settings.minimum
        else:
            policy = RecordingPolicy(make_policy(spec, settings))
            warm = idle_size(make_policy(spec, settings), settings.minimum)
        await backend.scale_up(warm)
        deadline = time.time() + settings.warmup_timeout
        while len(scheduler.workers) < warm:
            if time.time() > deadline:
                raise RuntimeError(f"warm-up: {len(scheduler.workers)}/{warm} workers registered")
            await asyncio.sleep(0.05)
        backend.set_boot_delay(settings.boot_delay)
        # Both loops start half an interval before the trace clock, as the simulator models
        # (SimulationSettings.tick_phase): ticks fall between the whole seconds at which the
        # traces' tasks start and end. Aligned, a tick raced the first completion to the
        # millisecond, and which came first decided the scheduler's duration estimate and
        # the scale-up (2 or 3 workers on `bursty`, 55 or 79 worker-seconds).
        t0 = time.time() + settings.interval * TICK_PHASE
        if spec.policy == DISTRIBUTED_ADAPTIVE:
            shim = ClusterShim(scheduler, backend)
            adaptive = Adaptive(shim, minimum=settings.minimum, maximum=settings.maximum)
        else:
            assert policy is not None
            link = RpcScheduler(scheduler.address, connection_args={})
            scaler = Scaler(
                scheduler=link,
                backend=backend,
                policy=policy,
                policy_name=spec.policy,
                bounds=Bounds(settings.minimum, settings.maximum),
                settings=LoopSettings(interval=settings.interval),
                metrics=ScalerMetrics(),
            )
            driver_task = asyncio.create_task(scaler.run(stop))
        handler_seconds.clear()  # warm-up calls are not part of the run

        async def sample() -> None:
            await asyncio.sleep(max(0.0, t0 - time.time()))
            count = 0
            while not stop.is_set():
                count += 1
                if count % 4 == 0:
                    await backend.instances()  # notes exits (and keeps the shim's view fresh)
                workers = list(scheduler.workers.values())
                samples.append(
                    (
                        time.time() - t0,
                        len(backend.live()),
                        len(workers),
                        sum(1 for ws in workers if not ws.processing),
                        tasks_left[0],
                    )
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.25)

        sampler = asyncio.create_task(sample())
        async with Client(scheduler.address, asynchronous=True) as client:
            futures: dict[str, list[Any]] = {}
            burst_futures: dict[str, list[Any]] = {}

            async def submit_all() -> None:
                for group in trace.groups:
                    delay = t0 + group.submit_at - time.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    durations = trace.durations(group)
                    parents = futures.get(group.depends_on) if group.depends_on else None
                    batch = [
                        client.submit(
                            sleep_task,
                            d,
                            group.output_bytes,
                            *([parents[i % len(parents)]] if parents else []),
                            key=f"{group.name}-{i}",
                            pure=False,
                        )
                        for i, d in enumerate(durations)
                    ]
                    futures[group.name] = batch
                    burst_futures.setdefault(group.burst, []).extend(batch)

            async def watch_bursts() -> None:
                for burst in trace.bursts:
                    while burst not in burst_futures or len(burst_futures[burst]) < sum(
                        g.count for g in trace.groups if g.burst == burst
                    ):
                        await asyncio.sleep(0.05)
                    await wait(burst_futures[burst])
                    record.burst_end[burst] = time.time() - t0

            async def count_done() -> None:
                while not stop.is_set():
                    submitted = [f for batch in futures.values() for f in batch]
                    tasks_left[0] = sum(not f.done() for f in submitted)
                    await asyncio.sleep(0.1)

            counter = asyncio.create_task(count_done())
            await asyncio.wait_for(
                asyncio.gather(submit_all(), watch_bursts()), timeout=settings.run_timeout
            )
            all_futures = [f for batch in futures.values() for f in batch]
            await wait(all_futures)
            record.makespan = time.time() - t0
            record.completed = True
            tasks_left[0] = 0
            stop.set()
            await counter
            await sampler
            if adaptive is not None:
                adaptive.stop("benchmark run finished")
            if driver_task is not None:
                await driver_task
        # metrics
        record.samples = samples
        end = record.makespan
        await backend.instances()
        for name, requested in backend.requested.items():
            exited = backend.exited.get(name)
            registered = recorder.registered.get(name)
            record.instances.append(
                (
                    name,
                    requested - t0,
                    None if registered is None else registered - t0,
                    None if exited is None else exited - t0,
                )
            )
        if adaptive is not None:
            for at, rec in adaptive.log:
                # upstream logs the target of a scale-up, only the workers of a scale-down
                kind = "up" if rec.get("status") == "up" else "down"
                target = rec.get("n") if kind == "up" else None
                released = tuple(str(w) for w in rec.get("workers", ()))
                record.decisions.append(
                    DecisionRecord(at - t0, kind, target, "distributed Adaptive", released)
                )
            polls = max(1, int(end / settings.interval))
            record.scheduler_seconds_per_poll = sum(handler_seconds) / polls
        else:
            assert policy is not None
            ticks = [d for d in policy.decisions if d.at >= t0]
            record.decisions = [replace(d, at=d.at - t0) for d in ticks]
            if tick_log is not None:
                tick_log.extend(replace(t, at=t.at - t0) for t in policy.ticks)
            record.scheduler_seconds_per_poll = sum(handler_seconds) / max(1, len(ticks))
        record.tasks_recomputed = sum(c - 1 for c in recorder.executions.values() if c > 1)
        record.keys_lost = recorder.keys_lost
        return record
    finally:
        stop.set()
        if adaptive is not None:
            adaptive.stop("benchmark run finished")
        if driver_task is not None and not driver_task.done():
            driver_task.cancel()
            with contextlib.suppress(BaseException):
                await driver_task
        await backend.close()
        if link is not None:
            await link.close()
        if shim is not None:
            await shim.scheduler_comm.close_rpc()
        await scheduler.close()
