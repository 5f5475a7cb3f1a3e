"""Metrics of one run, computed the same way for simulated and real runs."""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import asdict, dataclass

from .engine import RunRecord
from .trace import Trace, ideal_bounds


@dataclass(frozen=True)
class RunMetrics:
    """One run's numbers. Times in seconds from the trace start; ``nan`` = not applicable."""

    makespan: float
    burst_makespan_median: float
    worker_seconds: float
    """From each instance's request to its exit, clipped to [0, makespan]."""
    idle_worker_seconds: float
    time_to_scale_up_decision: float
    """Median over bursts that got one: burst submitted -> first scale-up decision."""
    time_to_first_worker: float
    """Median over bursts that got one: burst submitted -> first newly registered worker."""
    scale_events: int
    reversals: int
    """Scale-downs followed by a scale-up within the boot delay."""
    keys_lost: int
    tasks_recomputed: int
    scheduler_ms_per_poll: float
    ideal_makespan: float
    ideal_burst_makespan_median: float
    ideal_worker_seconds: float
    ideal_time_to_first_worker: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def compute_metrics(
    record: RunRecord, trace: Trace, *, boot_delay: float, maximum: int, threads: int
) -> RunMetrics:
    """Turn a :class:`RunRecord` into :class:`RunMetrics`."""
    end = record.makespan
    worker_seconds = 0.0
    for _, requested, _, exited in record.instances:
        start = max(0.0, requested)
        stop = end if exited is None else min(exited, end)
        worker_seconds += max(0.0, stop - start)
    idle = 0.0
    samples = record.samples
    for (t0, _, _, idle0, _), (t1, *_) in itertools.pairwise(samples):
        idle += idle0 * (min(t1, end) - t0) if t0 < end else 0.0
    starts: dict[str, float] = {}
    for group in trace.groups:
        starts.setdefault(group.burst, group.submit_at)
    bursts = trace.bursts
    burst_spans = [record.burst_end[b] - starts[b] for b in bursts if b in record.burst_end]
    ups = sorted(d.at for d in record.decisions if d.kind == "up")
    downs = sorted(d.at for d in record.decisions if d.kind == "down")
    registrations = sorted((req, r) for _, req, r, _ in record.instances if r is not None)
    to_decision, to_worker = [], []
    for index, burst in enumerate(bursts):
        begin = starts[burst]
        until = starts[bursts[index + 1]] if index + 1 < len(bursts) else math.inf
        first_up = next((t for t in ups if begin <= t < until), None)
        if first_up is None:
            continue
        to_decision.append(first_up - begin)
        arrivals = [r for req, r in registrations if req >= first_up and r > first_up]
        if arrivals:
            to_worker.append(min(arrivals) - begin)
    reversals = sum(1 for d in downs if any(d < u <= d + boot_delay for u in ups))
    bounds = ideal_bounds(trace, maximum, threads, boot_delay)
    return RunMetrics(
        makespan=end,
        burst_makespan_median=_median(burst_spans),
        worker_seconds=worker_seconds,
        idle_worker_seconds=idle,
        time_to_scale_up_decision=_median(to_decision),
        time_to_first_worker=_median(to_worker),
        scale_events=len(ups) + len(downs),
        reversals=reversals,
        keys_lost=record.keys_lost,
        tasks_recomputed=record.tasks_recomputed,
        scheduler_ms_per_poll=record.scheduler_seconds_per_poll * 1000,
        ideal_makespan=bounds.makespan,
        ideal_burst_makespan_median=_median(list(bounds.burst_makespan.values())),
        ideal_worker_seconds=bounds.worker_seconds,
        ideal_time_to_first_worker=bounds.first_worker_after_burst,
    )
