"""Run metrics (shared by the simulator and the real harness) and the bench schedule."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from dask_deploy.simulate.engine import RunRecord
from dask_deploy.simulate.metrics import compute_metrics
from dask_deploy.simulate.trace import TaskGroup, Trace, ideal_bounds
from dask_deploy.steps import DecisionRecord

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _trace() -> Trace:
    def group(name: str, at: float) -> TaskGroup:
        return TaskGroup(name, name, at, 4, 1.0, 0.0, 8, None, False)

    return Trace("t", "", 0, (group("a", 0.0), group("b", 10.0)))


def test_worker_seconds_run_from_request_to_exit_clipped_to_the_trace() -> None:
    record = RunRecord(
        instances=[("w1", -3.0, -1.0, None), ("w2", 2.0, 7.0, 12.0)],
        makespan=20.0,
        burst_end={"a": 4.0, "b": 14.0},
    )
    metrics = compute_metrics(record, _trace(), boot_delay=5.0, maximum=4, threads=1)
    assert metrics.worker_seconds == pytest.approx(20.0 + 10.0)
    assert metrics.burst_makespan_median == pytest.approx(4.0)


def test_reversal_is_a_scale_down_followed_by_a_scale_up_within_the_boot_delay() -> None:
    record = RunRecord(
        decisions=[
            DecisionRecord(1.0, "up", 2, ""),
            DecisionRecord(5.0, "down", 1, ""),
            DecisionRecord(8.0, "up", 2, ""),
            DecisionRecord(30, "down", 1, ""),
        ],
        instances=[("w1", 0.0, 0.0, None), ("w2", 1.0, 6.5, None), ("w3", 8.0, 13.0, None)],
        makespan=40.0,
    )
    metrics = compute_metrics(record, _trace(), boot_delay=5.0, maximum=4, threads=1)
    assert metrics.scale_events == 4
    assert metrics.reversals == 1
    # burst a: decision at 1 s, its worker at 6.5 s; burst b (at 10 s) had no scale-up of its own
    assert metrics.time_to_scale_up_decision == pytest.approx(1.0)
    assert metrics.time_to_first_worker == pytest.approx(6.5)


def test_idle_worker_seconds_integrate_the_samples() -> None:
    record = RunRecord(samples=[(0.0, 2, 2, 2, 0), (1.0, 2, 2, 1, 3), (3.0, 2, 2, 0, 0)])
    record.makespan = 3.0
    metrics = compute_metrics(record, _trace(), boot_delay=5.0, maximum=4, threads=1)
    assert metrics.idle_worker_seconds == pytest.approx(2 * 1.0 + 1 * 2.0)
    assert math.isnan(metrics.scheduler_ms_per_poll)


def test_ideal_bounds_pack_the_work_on_the_maximum() -> None:
    bounds = ideal_bounds(_trace(), maximum=2, threads=1, boot_delay=5.0)
    assert bounds.burst_makespan == {"a": 2.0, "b": 2.0}
    assert bounds.makespan == 12.0
    assert bounds.worker_seconds == 8.0


def test_bench_runs_policies_in_rotating_order() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import run  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(BENCH))
    specs = run.policies(6)
    order = [spec.label for _, _, spec in run.schedule([_trace()], specs, 3)]
    assert order[:4] == ["ours", "Adaptive", "static-max", "static-min"]
    assert order[4:8] == ["Adaptive", "static-max", "static-min", "ours"]
    assert order[8:12] == ["static-max", "static-min", "ours", "Adaptive"]
