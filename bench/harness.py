"""Real runs: a fresh scheduler, real `dask worker` processes, one policy, one trace.

One run = start a scheduler in this process, warm the cluster up to the policy's idle
size, replay the trace with a client (sleeping tasks), drive the policy every second,
and record what happened in a :class:`dask_deploy._sim_engine.RunRecord` (the same
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
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import Client, Scheduler, wait
from distributed.core import Status, rpc
from distributed.deploy.adaptive import Adaptive
from distributed.diagnostics.plugin import SchedulerPlugin

from dask_deploy._sim_engine import RunRecord
from dask_deploy._sim_trace import Trace
from dask_deploy._sim_workload import BOOT_DELAY_FILE, sleep_task
from dask_deploy.backends import Instance, InstanceState
from dask_deploy.policy import (
    Hold,
    Observation,
    PolicySettings,
    ScaleDown,
    ScaleUp,
    WorkerSnapshot,
    load_policy_factory,
)

DISTRIBUTED_ADAPTIVE = "distributed-adaptive"
MEMORY_LIMIT = 2 * 1024**3


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


# -- the backend: local `dask worker` processes with an injected boot delay -----------------
class LocalWorkers:
    """Starts ``dask worker`` processes named ``<deployment>-<n>``; removes exactly those named."""

    def __init__(self, scheduler: Scheduler, deployment: str, settings: HarnessSettings) -> None:
        self.scheduler = scheduler
        self.deployment = deployment
        self.settings = settings
        self.procs: dict[str, tuple[subprocess.Popen[bytes], float]] = {}
        self.exited: dict[str, float] = {}
        self._counter = 0
        self._delay_dir = tempfile.TemporaryDirectory(prefix="dask-deploy-bench-")
        self.delay_file = Path(self._delay_dir.name) / "boot-delay"
        self.set_boot_delay(0.0)

    def set_boot_delay(self, seconds: float) -> None:
        self.delay_file.write_text(str(seconds))

    def _spawn(self) -> str:
        self._counter += 1
        name = f"{self.deployment}-{self._counter}"
        env = dict(os.environ, **{BOOT_DELAY_FILE: str(self.delay_file)})
        env.pop("DASK_DISTRIBUTED__WORKER__PRELOAD", None)
        cmd = [
            sys.executable,
            "-m",
            "distributed.cli.dask_worker",
            self.scheduler.address,
            "--name",
            name,
            "--nthreads",
            str(self.settings.threads),
            "--nworkers",
            "1",
            "--no-nanny",
            "--memory-limit",
            str(MEMORY_LIMIT),
            "--host",
            "127.0.0.1",
            "--no-dashboard",
            "--death-timeout",
            "30",
            "--preload",
            "dask_deploy._sim_workload",
        ]
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs[name] = (proc, time.time())
        return name

    def live(self) -> list[str]:
        self.reap()
        return [name for name in self.procs if name not in self.exited]

    def reap(self) -> None:
        for name, (proc, _) in self.procs.items():
            if name not in self.exited and proc.poll() is not None:
                self.exited[name] = time.time()

    async def scale_up(self, n: int) -> None:
        while len(self.live()) < n:
            self._spawn()

    async def scale_down(self, names: Collection[str]) -> None:
        for name in names:
            entry = self.procs.get(name)
            if entry is None or name in self.exited:
                continue
            proc = entry[0]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            await asyncio.to_thread(_wait_or_kill, proc)
            self.exited[name] = time.time()

    async def instances(self) -> list[Instance]:
        self.reap()
        return [
            Instance(
                name,
                InstanceState.EXITED if name in self.exited else InstanceState.RUNNING,
                requested,
            )
            for name, (_, requested) in self.procs.items()
        ]

    async def close(self) -> None:
        await self.scale_down(list(self.procs))
        self._delay_dir.cleanup()


def _wait_or_kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


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
class OurDriver:
    """What the sidecar does each tick, on a real scheduler: observe, decide, act."""

    def __init__(
        self,
        spec: PolicySpec,
        settings: HarnessSettings,
        scheduler: Scheduler,
        backend: LocalWorkers,
    ) -> None:
        factory = load_policy_factory(spec.policy)
        self.policy = factory(
            PolicySettings(minimum=settings.minimum, maximum=settings.maximum, options=spec.options)
        )
        self.settings = settings
        self.scheduler = scheduler
        self.backend = backend
        self.decisions: list[tuple[float, str, int, str]] = []
        self.polls = 0
        self.scheduler_seconds = 0.0

    def observe(self, instances: list[Instance]) -> Observation:
        """The snapshot the sidecar reads over RPC, read here inside the scheduler."""
        started = time.perf_counter()
        s = self.scheduler
        workers = tuple(
            WorkerSnapshot(
                name=str(ws.name),
                address=ws.address,
                status=ws.status.name,
                threads=ws.nthreads,
                memory_limit=ws.memory_limit,
                stored_bytes=ws.nbytes,
                processing=len(ws.processing),
            )
            for ws in s.workers.values()
        )
        target = s.adaptive_target(self.policy.target_duration)
        to_close = tuple(s.workers_to_close(attribute="name", n=len(s.workers)))
        observation = Observation(
            workers=workers,
            instances=tuple(instances),
            adaptive_target=target,
            tasks_processing=sum(len(ws.processing) for ws in s.workers.values()),
            tasks_queued=len(s.queued),
            tasks_unrunnable=len(s.unrunnable),
            workers_to_close=tuple(str(n) for n in to_close),
        )
        self.scheduler_seconds += time.perf_counter() - started
        return observation

    async def tick(self) -> None:
        self.polls += 1
        observation = self.observe(await self.backend.instances())
        decision = self.policy.decide(observation, time.time())
        if isinstance(decision, ScaleUp):
            self.decisions.append((time.time(), "up", decision.n, decision.reason))
            await self.backend.scale_up(decision.n)
        elif isinstance(decision, ScaleDown):
            self.decisions.append((time.time(), "down", len(decision.names), decision.reason))
            pending = {i.name for i in observation.pending}
            cancel = [n for n in decision.names if n in pending]
            await self.backend.scale_down(cancel)
            others = [n for n in decision.names if n not in pending]
            if others:
                started = time.perf_counter()
                retired = await self.scheduler.retire_workers(
                    names=others, close_workers=True, remove=True
                )
                self.scheduler_seconds += time.perf_counter() - started
                names = {str(info.get("name")) for info in retired.values()}
                await self.backend.scale_down([n for n in others if n in names])
        else:
            assert isinstance(decision, Hold)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            await self.tick()
            delay = self.settings.interval - (time.monotonic() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, delay))

    def idle_size(self) -> int:
        probe = Observation(workers=(), instances=(), adaptive_target=0, tasks_processing=0)
        decision = self.policy.decide(probe, 0.0)
        return decision.n if isinstance(decision, ScaleUp) else self.settings.minimum


class ClusterShim:
    """The part of ``distributed.deploy.Cluster`` that ``Adaptive`` uses, over our backend."""

    def __init__(self, scheduler: Scheduler, backend: LocalWorkers) -> None:
        self.scheduler = scheduler
        self.backend = backend
        self.scheduler_comm = rpc(scheduler.address)
        self.status = Status.running
        from tornado.ioloop import IOLoop

        self.loop = IOLoop.current()

    @property
    def plan(self) -> set[str]:
        return set(self.backend.live())

    @property
    def requested(self) -> set[str]:
        return set(self.backend.live())

    @property
    def observed(self) -> set[str]:
        return {str(ws.name) for ws in self.scheduler.workers.values()}

    def scale(self, n: int) -> Awaitable[None]:
        return self.backend.scale_up(n)

    def scale_down(self, workers: Collection[str]) -> Awaitable[None]:
        return self.backend.scale_down(list(workers))

    def __await__(self) -> Iterator[Any]:
        async def _noop() -> ClusterShim:
            return self

        return _noop().__await__()


# -- one run ---------------------------------------------------------------------------------
async def run_once(
    trace: Trace, spec: PolicySpec, settings: HarnessSettings, run_id: str
) -> RunRecord:
    """Replay ``trace`` under ``spec`` on a fresh scheduler and fresh workers."""
    held = {
        g.name for g in trace.groups if g.hold or any(c.depends_on == g.name for c in trace.groups)
    }
    recorder = _Recorder(held)
    scheduler = await Scheduler(host="127.0.0.1", port=0, dashboard_address=":0", dashboard=False)
    scheduler.add_plugin(recorder)
    handler_seconds = _time_handlers(
        scheduler, ["adaptive_target", "workers_to_close", "retire_workers", "identity"]
    )
    backend = LocalWorkers(scheduler, f"bench-{run_id}", settings)
    stop = asyncio.Event()
    record = RunRecord()
    driver_task: asyncio.Task[None] | None = None
    adaptive: Adaptive | None = None
    shim: ClusterShim | None = None
    samples: list[tuple[float, int, int, int, int]] = []
    tasks_left = [trace.task_count]
    try:
        if spec.policy == DISTRIBUTED_ADAPTIVE:
            warm = settings.minimum
        else:
            driver = OurDriver(spec, settings, scheduler, backend)
            warm = driver.idle_size()
        await backend.scale_up(warm)
        deadline = time.time() + settings.warmup_timeout
        while len(scheduler.workers) < warm:
            if time.time() > deadline:
                raise RuntimeError(f"warm-up: {len(scheduler.workers)}/{warm} workers registered")
            await asyncio.sleep(0.05)
        backend.set_boot_delay(settings.boot_delay)
        t0 = time.time()
        if spec.policy == DISTRIBUTED_ADAPTIVE:
            shim = ClusterShim(scheduler, backend)
            adaptive = Adaptive(shim, minimum=settings.minimum, maximum=settings.maximum)
        else:
            driver_task = asyncio.create_task(driver.run(stop))

        async def sample() -> None:
            while not stop.is_set():
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
                    done = sum(f.done() for batch in futures.values() for f in batch)
                    tasks_left[0] = trace.task_count - done
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
        for name, (_, requested) in backend.procs.items():
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
                kind = str(rec.get("status"))
                n = int(rec.get("n", len(rec.get("workers", ()))))
                record.decisions.append((at - t0, kind, n, "distributed Adaptive"))
            polls = max(1, int(end / settings.interval))
            record.scheduler_seconds_per_poll = sum(handler_seconds) / polls
        else:
            record.decisions = [(t - t0, k, n, r) for t, k, n, r in driver.decisions]
            record.scheduler_seconds_per_poll = driver.scheduler_seconds / max(1, driver.polls)
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
        if shim is not None:
            await shim.scheduler_comm.close_rpc()
        await scheduler.close()
