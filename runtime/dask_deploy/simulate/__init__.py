"""Evaluate a scaling policy on a virtual clock, at any scale, before deploying it.

The simulator runs the *same* policy code as the sidecar (``dask_deploy.policy``)
against a model of the scheduler, its workers and a resource manager
(:mod:`dask_deploy.simulate.engine`): task durations and thread slots, a boot-delay
distribution, retirement that takes time proportional to the stored bytes, and keys
lost (then recomputed) when a worker dies without being retired. Its metrics are
computed by the same code as the real benchmark harness (``make bench``).

Example::

    >>> from dask_deploy.simulate import SimulationSettings, load_trace, simulate
    >>> trace = load_trace("bench/traces/bursty.json")  # doctest: +SKIP
    >>> result = simulate(trace, SimulationSettings(policy="adaptive"))  # doctest: +SKIP
    >>> result.metrics.makespan  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ..contract import Observation, ScaleUp
from .clairvoyant import CLAIRVOYANT, ClairvoyantPolicy
from .drivers import (
    DISTRIBUTED_ADAPTIVE,
    AdaptiveDriver,
    PolicyDriver,
    SimulationSettings,
    make_policy,
)
from .engine import ModelSettings, RunRecord, SimCluster
from .metrics import RunMetrics, compute_metrics
from .trace import TaskGroup, Trace, load_trace, parse_trace, save_trace


@dataclass(frozen=True)
class SimulationResult:
    record: RunRecord
    metrics: RunMetrics
    wall_seconds: float
    ticks: int


def simulate(trace: Trace, settings: SimulationSettings) -> SimulationResult:
    """Run ``trace`` under the policy on the model; return the record and its metrics."""
    started = time.perf_counter()
    # Both loops were started before the trace (the harness does the same): their first
    # tick inside the trace comes tick_phase of an interval in, then one per interval.
    adaptive = settings.policy == DISTRIBUTED_ADAPTIVE
    cluster = SimCluster(trace, settings.model, first_tick=settings.tick_phase * settings.interval)
    driver: PolicyDriver | AdaptiveDriver
    if adaptive:
        driver = AdaptiveDriver(settings)
    elif settings.policy == CLAIRVOYANT:
        oracle = ClairvoyantPolicy(
            trace,
            cluster,
            minimum=settings.minimum,
            maximum=settings.maximum,
            interval=settings.interval,
        )
        driver = PolicyDriver(oracle, settings, cluster)
    else:
        driver = PolicyDriver(make_policy(settings), settings, cluster)
    if settings.warm_start:
        cluster.warm_start(_idle_count(settings, driver, cluster))
    record = cluster.run(driver)
    record.scheduler_seconds_per_poll = math.nan
    metrics = compute_metrics(
        record,
        trace,
        boot_delay=settings.model.boot_delay,
        maximum=settings.maximum,
        threads=settings.model.threads,
    )
    return SimulationResult(record, metrics, time.perf_counter() - started, driver.ticks)


def _idle_count(
    settings: SimulationSettings, driver: PolicyDriver | AdaptiveDriver, cluster: SimCluster
) -> int:
    """How many workers the policy keeps on an idle cluster (its steady state)."""
    if isinstance(driver, AdaptiveDriver) or settings.policy == CLAIRVOYANT:
        return settings.minimum
    observation = Observation(workers=(), instances=(), adaptive_target=0, tasks_processing=0)
    probe = make_policy(settings)
    decision = probe.decide(observation, 0.0)
    if isinstance(decision, ScaleUp):
        return decision.n
    return settings.minimum


__all__ = [
    "CLAIRVOYANT",
    "DISTRIBUTED_ADAPTIVE",
    "AdaptiveDriver",
    "ClairvoyantPolicy",
    "ModelSettings",
    "PolicyDriver",
    "RunMetrics",
    "RunRecord",
    "SimCluster",
    "SimulationResult",
    "SimulationSettings",
    "TaskGroup",
    "Trace",
    "compute_metrics",
    "load_trace",
    "make_policy",
    "parse_trace",
    "save_trace",
    "simulate",
]
