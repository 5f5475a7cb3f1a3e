"""The simulator: model behaviour, metrics, the CLI's bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dask_deploy.cli import main
from dask_deploy.simulate import CLAIRVOYANT, DISTRIBUTED_ADAPTIVE, SimulationSettings, simulate
from dask_deploy.simulate.engine import ModelSettings, SimCluster
from dask_deploy.simulate.trace import TaskGroup, Trace, load_trace, parse_trace

TRACES = Path(__file__).resolve().parents[2] / "bench" / "traces"


def _group(name: str, at: float, count: int, duration: float, **extra: object) -> TaskGroup:
    fields: dict[str, object] = {
        "burst": name,
        "jitter": 0.0,
        "output_bytes": 8,
        "depends_on": None,
        "hold": False,
    }
    fields.update(extra)
    return TaskGroup(name=name, submit_at=at, count=count, duration=duration, **fields)  # type: ignore[arg-type]


def test_fixed_workers_run_tasks_in_waves() -> None:
    trace = Trace("t", "", 0, (_group("a", 0, 8, 1.0),))
    result = simulate(trace, SimulationSettings(policy="fixed", minimum=2, maximum=4))
    assert result.record.completed
    assert result.metrics.makespan == pytest.approx(4.0)
    assert result.metrics.worker_seconds == pytest.approx(8.0)
    assert result.metrics.keys_lost == 0


def test_adaptive_scales_up_for_a_long_burst_and_beats_the_minimum() -> None:
    trace = Trace("t", "", 0, (_group("a", 0, 60, 1.0),))
    fixed = simulate(trace, SimulationSettings(policy="fixed", minimum=1, maximum=6))
    adaptive = simulate(trace, SimulationSettings(policy="adaptive", minimum=1, maximum=6))
    assert any(d.kind == "up" for d in adaptive.record.decisions)
    assert adaptive.metrics.makespan < fixed.metrics.makespan
    assert adaptive.metrics.time_to_first_worker >= 5.0 * 0.9  # not before the boot delay


def test_dependent_group_waits_for_its_parent() -> None:
    trace = Trace(
        "t",
        "",
        0,
        (_group("map", 0, 2, 3.0, hold=True), _group("reduce", 1, 2, 1.0, depends_on="map")),
    )
    result = simulate(trace, SimulationSettings(policy="fixed", minimum=2, maximum=2))
    assert result.metrics.makespan == pytest.approx(4.0)


def test_killing_a_worker_that_holds_keys_loses_and_recomputes_them() -> None:
    trace = Trace("t", "", 0, (_group("held", 0, 4, 1.0, hold=True, output_bytes=1000),))
    cluster = SimCluster(trace, ModelSettings(threads=1))
    cluster.warm_start(1)
    name = next(iter(cluster.live))

    def tick(sim: SimCluster) -> None:
        if sim.now == 2.5:
            sim.scale_up(2)
            sim.remove([name])
        if sim.now < 3:
            sim.schedule_tick(sim.now + 0.5)

    cluster.schedule_tick(0.0)
    record = cluster.run(tick)
    assert record.completed
    assert record.keys_lost == 2
    assert record.tasks_recomputed == 3  # the two lost keys and the task running there


def test_retire_refuses_the_last_worker_holding_data() -> None:
    trace = Trace("t", "", 0, (_group("held", 0, 1, 0.1, hold=True, output_bytes=10),))
    cluster = SimCluster(trace, ModelSettings())
    cluster.warm_start(1)
    cluster.run(lambda sim: None)
    name = next(iter(cluster.live))
    retired, _ = cluster.retire([name])
    assert retired == []


def test_distributed_adaptive_model_runs_every_bench_trace() -> None:
    for path in sorted(TRACES.glob("*.json")):
        trace = load_trace(path)
        if trace.task_count > 10_000:
            continue
        result = simulate(trace, SimulationSettings(policy=DISTRIBUTED_ADAPTIVE))
        assert result.record.completed, trace.name


def test_trace_errors_name_the_key() -> None:
    with pytest.raises(Exception, match=r"groups\[0\]\.depends_on"):
        parse_trace(
            {
                "groups": [
                    {"name": "a", "submit_at": 0, "count": 1, "duration": 1, "depends_on": "x"}
                ]
            }
        )


def test_cli_prints_json_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", "--trace", str(TRACES / "dependent.json"), "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["completed"] is True
    assert out["metrics"]["makespan"] > 0


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--maximum", "0"], "--maximum"),
        (["--policy", "nope"], "--policy"),
        (["--option", "workers=99"], "policy.options.workers"),
        (["--boot-delay", "-1"], "--boot-delay"),
    ],
)
def test_cli_bad_input_exits_2_naming_it(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["simulate", "--trace", str(TRACES / "tiny.json"), "--policy", "fixed", *argv])
    assert code == 2
    err = capsys.readouterr().err
    assert named in err
    assert "Traceback" not in err


def test_cli_missing_trace_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--trace", "/nonexistent.json"]) == 2
    assert "--trace" in capsys.readouterr().err


def test_idle_workers_go_after_two_boot_times_not_after_a_minute() -> None:
    # One burst, then nothing for 70 s, then a second burst.
    trace = Trace("t", "", 0, (_group("a", 0, 60, 1.0), _group("b", 70, 6, 1.0)))
    model = ModelSettings(boot_delay=5.0, boot_jitter=0.0)
    default = simulate(trace, SimulationSettings(policy="adaptive", maximum=6, model=model))
    fixed_minute = simulate(
        trace,
        SimulationSettings(
            policy="adaptive",
            maximum=6,
            options={"scale_down_window_min": 60},
            model=model,
        ),
    )
    first_burst_end = default.record.burst_end["a"]
    exits = [e for _, _, _, e in default.record.instances if e is not None]
    assert exits and min(exits) <= first_burst_end + 2 * 5.0 + 1.0 + 1.0  # 2 boots, 1 tick
    assert all(e > first_burst_end + 60 for _, _, _, e in fixed_minute.record.instances if e)
    assert default.metrics.worker_seconds < 0.8 * fixed_minute.metrics.worker_seconds


def test_ticks_fall_half_an_interval_after_the_trace_starts() -> None:
    trace = Trace("t", "", 0, (_group("a", 0, 4, 1.0),))
    result = simulate(trace, SimulationSettings(policy="fixed", minimum=1, maximum=1))
    ticks = [d.at for d in result.record.decisions]
    assert ticks[:3] == [0.5, 1.5, 2.5]


def test_clairvoyant_registers_workers_when_the_burst_arrives() -> None:
    trace = Trace("t", "", 0, (_group("a", 0, 1, 1.0), _group("b", 50, 40, 2.0)))
    model = ModelSettings(boot_delay=10.0, boot_jitter=0.0)
    oracle = simulate(trace, SimulationSettings(policy=CLAIRVOYANT, maximum=10, model=model))
    reactive = simulate(trace, SimulationSettings(policy="adaptive", maximum=10, model=model))
    registered = sorted(r for _, q, r, _ in oracle.record.instances if r is not None and q > 0)
    assert registered and 49.0 <= registered[0] <= 51.0  # requested one boot ahead
    assert oracle.metrics.burst_makespan_median < reactive.metrics.burst_makespan_median
    assert oracle.metrics.keys_lost == 0


def test_cli_runs_the_clairvoyant_reference(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(TRACES / "bursty.json")
    assert main(["simulate", "--policy", "clairvoyant", "--trace", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["keys_lost"] == 0


def test_groups_of_one_task_prefix_share_the_schedulers_duration_estimate() -> None:
    """The scheduler learns durations per key prefix (``run-1-0`` -> ``run``): a second group
    of the same function starts with the first one's measured mean; another name does not."""
    trace = Trace(
        "t",
        "",
        0,
        (
            _group("run-0", 0, 2, 2.0),
            _group("run-1", 10, 2, 2.0),
            _group("other", 10, 2, 2.0),
        ),
    )
    cluster = SimCluster(trace, ModelSettings())
    cluster.warm_start(1)
    seen: dict[int, float] = {}

    def tick(sim: SimCluster) -> None:
        seen[1], seen[2] = sim.prefix_duration(1), sim.prefix_duration(2)

    cluster.schedule_tick(10.0)  # after the submissions at 10: nothing has run yet
    cluster.run(tick)
    assert seen == {1: 2.0, 2: 0.5}


def test_measured_boots_are_used_in_order_of_request() -> None:
    trace = Trace("t", "", 0, (_group("a", 0, 4, 10.0),))
    cluster = SimCluster(trace, ModelSettings(boot_delay=5.0, boot_jitter=0.0, boot_delays=(2.0,)))
    cluster.warm_start(1)  # registered from the start: not one of the measured
    cluster.scale_up(3)
    boots = sorted(w.boot_at - w.requested_at for w in cluster.workers.values())
    assert boots == [0.0, 2.0, 5.0]
