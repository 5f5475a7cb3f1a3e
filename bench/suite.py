"""The simulated suite of `make bench`: every trace x boot delay x policy, as ratios.

    python bench/suite.py [--boot-delays 5,30,90] [--traces a,b]

Ours, distributed's Adaptive, static-max, static-min and the clairvoyant reference, on the
simulator (same policy code as the sidecar), with the issue's targets checked per row and
as geometric means. Also imported by bench/run.py.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dask_deploy.simulate import CLAIRVOYANT, DISTRIBUTED_ADAPTIVE, SimulationSettings, simulate
from dask_deploy.simulate.engine import ModelSettings
from dask_deploy.simulate.metrics import RunMetrics
from dask_deploy.simulate.trace import Trace, load_trace

HERE = Path(__file__).parent
SHORT_TRACES = ["bursty", "dependent", "long-unknown", "tiny", "memory", "ramp"]
LONG_TRACES = ["gaps", "session-long", "session-short", "map-reduce", "trickle-spikes", "periodic"]
BOOT_DELAYS = [5.0, 30.0, 90.0]
MINIMUM = 1
SHORT_MAXIMUM = 6
"""The short traces keep the real harness's maximum; the long suite has room to scale."""
LONG_MAXIMUM = 20
OURS, ADAPTIVE, STATIC_MAX, STATIC_MIN, ORACLE = (
    "ours",
    "Adaptive",
    "static-max",
    "static-min",
    "clairvoyant",
)


@dataclass(frozen=True)
class Row:
    trace: str
    boot: float
    label: str
    metrics: RunMetrics


def policy_settings(label: str, maximum: int, boot: float) -> tuple[str, dict[str, object]]:
    """Registry name and options of each compared policy.

    Ours is told the deployment's typical boot time (``boot_time``), as an operator would
    set it; it replaces that with the boot times it observes once workers have booted.
    """
    return {
        OURS: ("adaptive", {"boot_time": boot}),
        ADAPTIVE: (DISTRIBUTED_ADAPTIVE, {}),
        STATIC_MAX: ("fixed", {"workers": maximum}),
        STATIC_MIN: ("fixed", {}),
        ORACLE: (CLAIRVOYANT, {}),
    }[label]


LABELS = [OURS, ADAPTIVE, STATIC_MAX, STATIC_MIN, ORACLE]


def maximum_for(trace: str) -> int:
    return SHORT_MAXIMUM if trace in SHORT_TRACES else LONG_MAXIMUM


def run_suite(traces: list[Trace], boots: list[float], labels: list[str] = LABELS) -> list[Row]:
    rows = []
    for trace in traces:
        maximum = maximum_for(trace.name)
        for boot in boots:
            for label in labels:
                policy, options = policy_settings(label, maximum, boot)
                settings = SimulationSettings(
                    policy=policy,
                    minimum=MINIMUM,
                    maximum=maximum,
                    options=options,
                    model=ModelSettings(boot_delay=boot),
                )
                rows.append(Row(trace.name, boot, label, simulate(trace, settings).metrics))
    return rows


def fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    if float(value).is_integer() and abs(value) < 1000:
        return str(int(value))
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def _ratio(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b) or b == 0:
        return math.nan
    return a / b


@dataclass(frozen=True)
class Verdict:
    """Ours against Adaptive and the clairvoyant on one trace x boot delay."""

    trace: str
    boot: float
    worker_seconds: float
    """Ours / Adaptive."""
    burst: float
    """Ours / Adaptive, median burst makespan."""
    reversals: float
    to_oracle_worker_seconds: float
    to_oracle_burst: float
    lost: float
    recomputed: float

    @property
    def meets(self) -> bool:
        return (
            self.worker_seconds <= 1.0
            and (math.isnan(self.burst) or self.burst <= 1.0)
            and self.reversals <= 1
        )


def verdicts(rows: list[Row]) -> list[Verdict]:
    by_key = {(r.trace, r.boot, r.label): r.metrics for r in rows}
    out = []
    for trace, boot in dict.fromkeys((r.trace, r.boot) for r in rows):
        ours, adaptive = by_key[trace, boot, OURS], by_key[trace, boot, ADAPTIVE]
        oracle = by_key[trace, boot, ORACLE]
        out.append(
            Verdict(
                trace,
                boot,
                _ratio(ours.worker_seconds, adaptive.worker_seconds),
                _ratio(ours.burst_makespan_median, adaptive.burst_makespan_median),
                ours.reversals,
                _ratio(ours.worker_seconds, oracle.worker_seconds),
                _ratio(ours.burst_makespan_median, oracle.burst_makespan_median),
                ours.keys_lost,
                ours.tasks_recomputed,
            )
        )
    return out


def geomean(values: list[float]) -> float:
    clean = [v for v in values if not math.isnan(v) and v > 0]
    return math.exp(statistics.fmean(math.log(v) for v in clean)) if clean else math.nan


SUITE_HEAD = [
    "trace",
    "boot s",
    "policy",
    "makespan s",
    "worker-s",
    "/Adaptive",
    "/clairv.",
    "burst s",
    "/Adaptive",
    "/clairv.",
    "revers.",
    "lost",
    "recomp.",
]


def suite_cells(rows: list[Row]) -> list[list[str]]:
    by_key = {(r.trace, r.boot, r.label): r.metrics for r in rows}
    cells = []
    for row in rows:
        m = row.metrics
        adaptive = by_key[row.trace, row.boot, ADAPTIVE]
        oracle = by_key[row.trace, row.boot, ORACLE]
        cells.append(
            [
                row.trace,
                fmt(row.boot),
                row.label,
                fmt(m.makespan),
                fmt(m.worker_seconds),
                fmt(round(_ratio(m.worker_seconds, adaptive.worker_seconds), 2)),
                fmt(round(_ratio(m.worker_seconds, oracle.worker_seconds), 2)),
                fmt(m.burst_makespan_median),
                fmt(round(_ratio(m.burst_makespan_median, adaptive.burst_makespan_median), 2)),
                fmt(round(_ratio(m.burst_makespan_median, oracle.burst_makespan_median), 2)),
                fmt(m.reversals),
                fmt(m.keys_lost),
                fmt(m.tasks_recomputed),
            ]
        )
    return cells


VERDICT_HEAD = [
    "trace",
    "boot s",
    "w-s /Adaptive",
    "burst /Adaptive",
    "revers.",
    "w-s /clairv.",
    "burst /clairv.",
    "lost",
    "recomp.",
    "meets per-trace target",
]


def verdict_cells(results: list[Verdict]) -> list[list[str]]:
    return [
        [
            v.trace,
            fmt(v.boot),
            f"{v.worker_seconds:.2f}",
            "-" if math.isnan(v.burst) else f"{v.burst:.2f}",
            fmt(v.reversals),
            f"{v.to_oracle_worker_seconds:.2f}",
            "-" if math.isnan(v.to_oracle_burst) else f"{v.to_oracle_burst:.2f}",
            fmt(v.lost),
            fmt(v.recomputed),
            "yes" if v.meets else "NO",
        ]
        for v in results
    ]


def summary_lines(results: list[Verdict]) -> list[str]:
    met = sum(v.meets for v in results)
    ws = geomean([v.worker_seconds for v in results])
    oracle_ws = geomean([v.to_oracle_worker_seconds for v in results])
    oracle_burst = geomean([v.to_oracle_burst for v in results])
    lost = sum(v.lost for v in results)
    recomputed = sum(v.recomputed for v in results)
    return [
        f"per trace x boot delay (w-s and burst <= 1.00x Adaptive, <= 1 reversal): "
        f"{met} of {len(results)} met",
        f"geometric mean worker-seconds, ours / Adaptive: {ws:.2f} (target <= 0.80)",
        f"geometric mean, ours / clairvoyant: worker-seconds {oracle_ws:.2f} (target <= 1.5), "
        f"burst makespan {oracle_burst:.2f} (target <= 1.1)",
        f"ours, whole suite: {lost:g} keys lost, {recomputed:g} tasks recomputed (target 0, 0)",
    ]


def markdown(head: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def rich_table(title: str, head: list[str], cells: list[list[str]]) -> Table:
    out = Table(title=title)
    for header in head:
        out.add_column(header, justify="left" if header in ("trace", "policy") else "right")
    for row in cells:
        out.add_row(*row)
    return out


def load(names: list[str]) -> list[Trace]:
    return [load_trace(HERE / "traces" / f"{name}.json") for name in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boot-delays", default=",".join(f"{b:g}" for b in BOOT_DELAYS))
    parser.add_argument("--traces", default=",".join(SHORT_TRACES + LONG_TRACES))
    parser.add_argument("--verdicts-only", action="store_true")
    args = parser.parse_args(argv)
    boots = [float(b) for b in args.boot_delays.split(",")]
    started = time.perf_counter()
    rows = run_suite(load(args.traces.split(",")), boots)
    console = Console(width=200)
    if not args.verdicts_only:
        console.print(rich_table("simulated suite", SUITE_HEAD, suite_cells(rows)))
    results = verdicts(rows)
    console.print(rich_table("ours against the targets", VERDICT_HEAD, verdict_cells(results)))
    for line in summary_lines(results):
        console.print(line)
    console.print(f"simulated in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
