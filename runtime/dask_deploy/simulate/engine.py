"""A discrete-event model of a Dask scheduler, its workers and a resource manager.

Virtual clock, one event heap. Tasks are kept in aggregated groups (a duration list
and a cursor), so a million tasks cost a million completion events and nothing
more. The model covers what a scaling policy can see or change: thread slots,
per-prefix duration estimates (unknown tasks count 0.5 s, as in distributed),
``adaptive_target`` and ``workers_to_close`` as the scheduler computes them, a
boot-delay distribution, retirement that takes time proportional to the bytes a
worker stores, and keys lost (and recomputed) when a worker dies unretired.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from dask.utils import key_split

from ..steps import DecisionRecord
from .trace import Trace

UNKNOWN_TASK_DURATION = 0.5
"""distributed.scheduler.unknown-task-duration."""

TickHandler = Callable[["SimCluster"], None]
"""Called on each scaler tick; it schedules the next one."""

_SUBMIT, _BOOTED, _DONE, _RETIRED, _TICK, _SAMPLE = range(6)


@dataclass(frozen=True)
class ModelSettings:
    """Knobs of the scheduler / resource-manager model."""

    threads: int = 1
    memory_limit: int = 2 * 1024**3
    boot_delay: float = 5.0
    boot_jitter: float = 0.1
    """Boot delay is ``boot_delay * uniform(1 - jitter, 1 + jitter)``."""
    boot_delays: tuple[float, ...] = ()
    """Boots of the first workers requested (a real run's, measured, in order of request);
    the workers requested after them boot as ``boot_delay`` says."""
    transfer_bandwidth: float = 200e6
    """Bytes per second a retiring worker hands to its peers."""
    retire_overhead: float = 0.05
    sample_interval: float = 0.25
    seed: int = 0
    time_limit: float = 24 * 3600.0


@dataclass
class SimWorker:
    name: str
    requested_at: float
    boot_at: float
    registered_at: float | None = None
    exited_at: float | None = None
    running: int = 0
    retiring: bool = False
    stored: dict[int, int] = field(default_factory=dict)
    """Held results by group index: how many keys of each group live here."""
    stored_bytes: int = 0

    @property
    def registered(self) -> bool:
        return self.registered_at is not None and self.exited_at is None

    @property
    def pending(self) -> bool:
        return self.registered_at is None and self.exited_at is None


@dataclass
class _Chunk:
    group: int
    durations: list[float]
    position: int = 0


@dataclass
class RunRecord:
    """What happened in one run, simulated or real: the input of the metrics."""

    instances: list[tuple[str, float, float | None, float | None]] = field(default_factory=list)
    """(name, requested_at, registered_at, exited_at) relative to the trace start."""
    decisions: list[DecisionRecord] = field(default_factory=list)
    """Every tick's decision, its time relative to the trace start."""
    samples: list[tuple[float, int, int, int, int]] = field(default_factory=list)
    """(time, requested, registered, idle registered, tasks submitted and not finished)."""
    burst_end: dict[str, float] = field(default_factory=dict)
    makespan: float = math.nan
    keys_lost: int = 0
    tasks_recomputed: int = 0
    scheduler_seconds_per_poll: float = math.nan
    completed: bool = False


class SimCluster:
    """The simulated scheduler, workers and resource manager."""

    def __init__(
        self,
        trace: Trace,
        settings: ModelSettings,
        deployment: str = "sim",
        first_tick: float | None = None,
    ) -> None:
        self.trace = trace
        self.settings = settings
        self.deployment = deployment
        self.now = 0.0
        self.record = RunRecord()
        self._rng = random.Random(settings.seed)
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = 0
        self._counter = 0
        self._requests = 0
        """Workers requested during the run (``ModelSettings.boot_delays`` are theirs)."""
        self.workers: dict[str, SimWorker] = {}
        self.live: dict[str, SimWorker] = {}
        """Workers not exited (pending, registered or retiring)."""
        self._free: list[SimWorker] = []
        self._ready: deque[_Chunk] = deque()
        groups = trace.groups
        self._durations = [trace.durations(g) for g in groups]
        self._index = {g.name: i for i, g in enumerate(groups)}
        self._parent = [self._index[g.depends_on] if g.depends_on else -1 for g in groups]
        self._remaining = [g.count for g in groups]
        self._ready_count = [0] * len(groups)
        self._running_count = [0] * len(groups)
        # The scheduler learns durations per task prefix (the key up to its first numeric
        # part): the harness names a task ``{group}-{i}``, so groups named ``run-0`` and
        # ``run-1`` share the prefix ``run`` and the second starts with a known duration.
        prefixes: dict[str, int] = {}
        self._prefix = [
            prefixes.setdefault(key_split(f"{g.name}-0"), len(prefixes)) for g in groups
        ]
        self._observed_total = [0.0] * len(prefixes)
        self._observed_n = [0] * len(prefixes)
        self._first_start = [math.inf] * len(prefixes)
        self._submitted = [False] * len(groups)
        self._children: dict[int, list[int]] = {}
        for i, parent in enumerate(self._parent):
            if parent >= 0:
                self._children.setdefault(parent, []).append(i)
        self._burst_left: dict[str, int] = {}
        for g in groups:
            self._burst_left[g.burst] = self._burst_left.get(g.burst, 0) + g.count
        self._tasks_left = trace.task_count
        self._outstanding = 0
        """Tasks submitted and not finished: the load."""
        self.idle_registered = 0
        self.registered_count = 0
        self.threads_total = 0
        self.bytes_total = 0
        if first_tick is not None:
            # before any submission at the same instant, as the real loop ticks on start
            self._push(first_tick, _TICK, None)
        for i, g in enumerate(groups):
            self._push(g.submit_at, _SUBMIT, i)

    # -- events ---------------------------------------------------------------------------
    def _push(self, at: float, kind: int, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, payload))

    def schedule_tick(self, at: float) -> None:
        self._push(at, _TICK, None)

    def run(self, on_tick: TickHandler) -> RunRecord:
        """Advance until every task is done (or the time limit); call ``on_tick`` on ticks."""
        self._push(0.0, _SAMPLE, None)
        heap = self._heap
        pop = heapq.heappop
        limit = self.settings.time_limit
        while heap and self._tasks_left > 0:
            at, _, kind, payload = pop(heap)
            if at > limit:
                break
            self.now = at
            if kind == _DONE:
                self._task_done(payload)  # type: ignore[arg-type]
            elif kind == _TICK:
                on_tick(self)
            elif kind == _SAMPLE:
                self._sample()
                self._push(at + self.settings.sample_interval, _SAMPLE, None)
            elif kind == _SUBMIT:
                self._submit(payload)  # type: ignore[arg-type]
            elif kind == _BOOTED:
                self._booted(payload)  # type: ignore[arg-type]
            elif kind == _RETIRED:
                self._retired(payload)  # type: ignore[arg-type]
        record = self.record
        record.completed = self._tasks_left == 0
        record.makespan = self.now
        self._sample()
        for worker in self.workers.values():
            record.instances.append(
                (worker.name, worker.requested_at, worker.registered_at, worker.exited_at)
            )
        return record

    def _sample(self) -> None:
        self.record.samples.append(
            (
                self.now,
                len(self.live),
                self.registered_count,
                self.idle_registered,
                self._outstanding,
            )
        )

    # -- tasks -----------------------------------------------------------------------------
    def _submit(self, group: int) -> None:
        parent = self._parent[group]
        if parent >= 0 and self._remaining[parent] > 0:
            return  # released when the parent group finishes
        self._release(group)

    def _release(self, group: int) -> None:
        if self._submitted[group]:
            return
        self._submitted[group] = True
        durations = self._durations[group]
        self._outstanding += len(durations)
        self._ready.append(_Chunk(group, durations))
        self._ready_count[group] += len(durations)
        self._dispatch()

    def _dispatch(self) -> None:
        free = self._free
        ready = self._ready
        threads = self.settings.threads
        while free and ready:
            worker = free[-1]
            if worker.exited_at is not None or worker.retiring or worker.running >= threads:
                free.pop()
                continue
            self._start_task(worker)
            if worker.running >= threads:
                free.pop()

    def _start_task(self, worker: SimWorker) -> None:
        chunk = self._ready[0]
        duration = chunk.durations[chunk.position]
        chunk.position += 1
        if chunk.position >= len(chunk.durations):
            self._ready.popleft()
        group = chunk.group
        prefix = self._prefix[group]
        if self._first_start[prefix] == math.inf:
            self._first_start[prefix] = self.now
        self._ready_count[group] -= 1
        self._running_count[group] += 1
        if worker.running == 0:
            self.idle_registered -= 1
        worker.running += 1
        self._push(self.now + duration, _DONE, (worker, group, duration))

    def _task_done(self, payload: tuple[SimWorker, int, float]) -> None:
        worker, group, duration = payload
        self._running_count[group] -= 1
        if worker.exited_at is not None:
            # the worker died under the task: the scheduler reschedules it
            self.record.tasks_recomputed += 1
            self._ready.append(_Chunk(group, [duration]))
            self._ready_count[group] += 1
            self._dispatch()
            return
        worker.running -= 1
        self._observed_total[self._prefix[group]] += duration
        self._observed_n[self._prefix[group]] += 1
        spec = self.trace.groups[group]
        if spec.hold or group in self._children:
            worker.stored[group] = worker.stored.get(group, 0) + 1
            worker.stored_bytes += spec.output_bytes
            self.bytes_total += spec.output_bytes
        self._remaining[group] -= 1
        self._tasks_left -= 1
        self._outstanding -= 1
        left = self._burst_left[spec.burst] - 1
        self._burst_left[spec.burst] = left
        if left == 0:
            self.record.burst_end[spec.burst] = self.now
        if self._remaining[group] == 0:
            for child in self._children.get(group, ()):
                if self.trace.groups[child].submit_at <= self.now:
                    self._release(child)
        if worker.running == 0:
            self.idle_registered += 1
        if worker.retiring:
            return
        if self._ready:
            self._start_task(worker)
        else:
            self._free.append(worker)

    # -- the resource manager --------------------------------------------------------------
    def scale_up(self, n: int) -> list[str]:
        """Bring the requested (pending or running) count up to ``n``; never lowers it."""
        new = []
        while len(self.live) < n:
            self._counter += 1
            name = f"{self.deployment}-{self._counter}"
            jitter = self.settings.boot_jitter
            delay = self.settings.boot_delay * self._rng.uniform(1 - jitter, 1 + jitter)
            if self._requests < len(self.settings.boot_delays):
                delay = self.settings.boot_delays[self._requests]
            self._requests += 1
            worker = SimWorker(name, self.now, self.now + delay)
            self.workers[name] = worker
            self.live[name] = worker
            self._push(worker.boot_at, _BOOTED, worker)
            new.append(name)
        return new

    def warm_start(self, n: int) -> None:
        """Start with ``n`` workers already registered at time zero."""
        requests = self._requests
        for name in self.scale_up(n):
            worker = self.workers[name]
            worker.boot_at = 0.0
            self._booted(worker)
        self._requests = requests  # not requested during the run

    def _booted(self, worker: SimWorker) -> None:
        if worker.exited_at is not None or worker.registered_at is not None:
            return
        worker.registered_at = self.now
        self.registered_count += 1
        self.threads_total += self.settings.threads
        self.idle_registered += 1
        self._free.append(worker)
        self._dispatch()

    def remove(self, names: list[str]) -> None:
        """The resource manager stops these instances now (no retirement)."""
        for name in names:
            worker = self.live.get(name)
            if worker is None:
                continue
            self._exit(worker)
            if worker.stored_bytes:
                self._lose(worker)

    def _exit(self, worker: SimWorker) -> None:
        worker.exited_at = self.now
        del self.live[worker.name]
        if worker.registered_at is not None:
            self.registered_count -= 1
            self.threads_total -= self.settings.threads
            if worker.running == 0:
                self.idle_registered -= 1
            # tasks still running there finish on no one: _task_done reschedules them
            worker.running = 0

    def _lose(self, worker: SimWorker) -> None:
        for group, count in worker.stored.items():
            self.record.keys_lost += count
            self.record.tasks_recomputed += count
            durations = self._durations[group][:count]
            # the client still wants them: recomputed, stored again
            self._ready.append(_Chunk(group, durations))
            self._ready_count[group] += count
            self._remaining[group] += count
            self._tasks_left += count
            self._outstanding += count
            self._burst_left[self.trace.groups[group].burst] += count
        self.bytes_total -= worker.stored_bytes
        worker.stored.clear()
        worker.stored_bytes = 0
        self._dispatch()

    # -- the scheduler's view --------------------------------------------------------------
    def retire(self, names: list[str]) -> tuple[list[str], float]:
        """``retire_workers(names, close_workers=True, remove=True)``.

        Returns the names the scheduler retired and when the call returns. A worker
        whose data has nowhere to go (no other worker) is not retired.
        """
        candidates = [self.live[n] for n in names if n in self.live and self.live[n].registered]
        leaving = set(names)  # a set: a 10 000-worker scale-down names thousands
        keep = [w for w in self.live.values() if w.registered and w.name not in leaving]
        retired: list[str] = []
        finish = self.now
        moved = 0
        for worker in candidates:
            if worker.stored_bytes and not keep:
                continue
            worker.retiring = True
            moved += worker.stored_bytes
            retired.append(worker.name)
        if retired:
            finish = self.now + self.settings.retire_overhead
            finish += moved / self.settings.transfer_bandwidth
            self._push(finish, _RETIRED, (retired, keep))
        return retired, finish

    def _retired(self, payload: tuple[list[str], list[SimWorker]]) -> None:
        names, keep = payload
        keep = [w for w in keep if w.registered] or [
            w for w in self.live.values() if w.registered and not w.retiring
        ]
        for name in names:
            worker = self.workers[name]
            if worker.exited_at is not None:
                continue
            if keep:
                target = min(keep, key=lambda w: w.stored_bytes)
                for group, count in worker.stored.items():
                    target.stored[group] = target.stored.get(group, 0) + count
                target.stored_bytes += worker.stored_bytes
                worker.stored.clear()
                worker.stored_bytes = 0
            self._exit(worker)
            if worker.stored_bytes:
                self._lose(worker)

    def prefix_duration(self, group: int) -> float:
        """The scheduler's estimate: the mean seen so far; before any task finished, twice
        the longest time a task of the prefix has been executing, else 0.5 s."""
        prefix = self._prefix[group]
        n = self._observed_n[prefix]
        if n:
            return self._observed_total[prefix] / n
        executing = self.now - self._first_start[prefix]
        return 2 * executing if executing > 0 else UNKNOWN_TASK_DURATION

    @property
    def queued(self) -> int:
        """Root tasks waiting at the scheduler for a thread."""
        return sum(c for i, c in enumerate(self._ready_count) if self._parent[i] < 0 and c > 0)

    @property
    def unrunnable(self) -> int:
        return sum(self._ready_count) if self.registered_count == 0 else 0

    @property
    def processing(self) -> int:
        return sum(self._running_count) + sum(
            c for i, c in enumerate(self._ready_count) if self._parent[i] >= 0
        )

    def _occupancy(self) -> tuple[float, float, int]:
        """Processing and queued task time (the scheduler's estimates), and the queued count."""
        durations = [self.prefix_duration(i) for i in range(len(self._ready_count))]
        occupancy = sum(r * d for r, d in zip(self._running_count, durations, strict=True))
        queued_occupancy = 0.0
        tasks_ready = 0
        for i, count in enumerate(self._ready_count):
            if self._parent[i] >= 0:
                occupancy += count * durations[i]  # non-root tasks go straight to workers
            else:
                queued_occupancy += count * durations[i]
                tasks_ready += count
        return occupancy, queued_occupancy, tasks_ready

    def outstanding(self) -> tuple[int, float]:
        """Tasks submitted and not finished, and the true seconds of work left in them.

        What only a clairvoyant knows: queued tasks at their real durations, running ones for
        the time they still run.
        """
        ready = sum(sum(c.durations[c.position :]) for c in self._ready)
        running = 0.0
        count = sum(self._ready_count)
        for at, _, kind, payload in self._heap:
            if kind == _DONE and payload[0].exited_at is None:  # type: ignore[index]
                running += at - self.now
                count += 1
        return count, ready + running

    def work_seconds(self) -> float:
        """The known work as ``dask_deploy.scheduler_preload`` reports it."""
        occupancy, queued_occupancy, _ = self._occupancy()
        return occupancy + queued_occupancy

    def adaptive_target(self, target_duration: float = 5.0) -> int:
        """distributed's ``Scheduler.adaptive_target``, on the model's state."""
        occupancy, queued_occupancy, tasks_ready = self._occupancy()
        cpu = math.ceil((occupancy + queued_occupancy) / target_duration)
        if tasks_ready <= cpu:
            cpu = min(tasks_ready + self.processing, cpu)
        workers = self.registered_count
        if workers:
            cpu = math.ceil(cpu / self.threads_total * workers)
        if tasks_ready and not workers:
            cpu = max(1, cpu)
        limit = self.settings.memory_limit * workers
        memory = 2 * workers if limit and self.bytes_total > 0.6 * limit else 0
        target = max(memory, cpu)
        if target >= workers:
            return target
        return workers - len(self.workers_to_close())

    def workers_to_close(self, n: int | None = None, memory_ratio: float = 2.0) -> list[str]:
        """Idle workers holding the least data, keeping room for twice the stored bytes."""
        registered = [w for w in self.live.values() if w.registered and not w.retiring]
        idle = sorted((w for w in registered if w.running == 0), key=lambda w: w.stored_bytes)
        limit_left = self.settings.memory_limit * len(registered)
        needed = self.bytes_total * memory_ratio
        names: list[str] = []
        for worker in idle:
            if n is not None and len(names) >= n:
                break
            if limit_left - self.settings.memory_limit < needed:
                break
            limit_left -= self.settings.memory_limit
            names.append(worker.name)
        return names
