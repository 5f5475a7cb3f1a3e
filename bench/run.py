"""`make bench`: every trace under every policy, interleaved, with real workers.

    python bench/run.py [--reps 3] [--traces bursty,dependent,...] [--boot-delay 5]

Writes bench/results/results.json, one PNG per trace and bench/results/summary.md,
and prints the table (medians; ratios against distributed's Adaptive and against
static-max from the same run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))

import scheduler_cost
import suite
from dask_deploy.simulate import CLAIRVOYANT, SimulationSettings, simulate
from dask_deploy.simulate.engine import ModelSettings, RunRecord
from dask_deploy.simulate.metrics import compute_metrics
from dask_deploy.simulate.trace import Trace, load_trace
from harness import DISTRIBUTED_ADAPTIVE, HarnessSettings, PolicySpec, run_once
from suite import fmt

HERE = Path(__file__).parent
DEFAULT_TRACES = ["bursty", "dependent", "long-unknown", "tiny", "memory", "ramp"]
QUICK_TRACES = ["dependent", "tiny"]
OURS, ADAPTIVE, STATIC_MAX, STATIC_MIN = "ours", "Adaptive", "static-max", "static-min"
COLUMNS = [
    ("makespan", "makespan s"),
    ("worker_seconds", "worker-s"),
    ("idle_worker_seconds", "idle w-s"),
    ("burst_makespan_median", "burst s"),
    ("time_to_scale_up_decision", "->decide s"),
    ("time_to_first_worker", "->worker s"),
    ("scale_events", "events"),
    ("reversals", "revers."),
    ("keys_lost", "lost"),
    ("tasks_recomputed", "recomp."),
    ("scheduler_ms_per_poll", "sched ms/poll"),
]


def policies(maximum: int, boot_delay: float = 5.0) -> list[PolicySpec]:
    return [
        # Told the deployment's boot time, as an operator would set it (suite.policy_settings).
        PolicySpec(OURS, "adaptive", {"boot_time": boot_delay}),
        PolicySpec(ADAPTIVE, DISTRIBUTED_ADAPTIVE),
        PolicySpec(STATIC_MAX, "fixed", {"workers": maximum}),
        PolicySpec(STATIC_MIN, "fixed"),
    ]


def schedule(
    traces: list[Trace], specs: list[PolicySpec], reps: int
) -> list[tuple[int, Trace, PolicySpec]]:
    """Interleaved: the policy order rotates every repetition (ABCD, BCDA, CDAB, ...)."""
    runs = []
    for rep in range(reps):
        order = specs[rep % len(specs) :] + specs[: rep % len(specs)]
        for trace in traces:
            runs.extend((rep, trace, spec) for spec in order)
    return runs


def median(values: list[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


def ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b) or b == 0:
        return "-"
    return f"{a / b:.2f}"


def summarize(
    results: dict[str, dict[str, list[dict[str, float]]]],
) -> dict[str, dict[str, dict[str, float]]]:
    return {
        trace: {
            label: {key: median([run[key] for run in runs]) for key in runs[0]}
            for label, runs in by_policy.items()
            if runs
        }
        for trace, by_policy in results.items()
    }


def table(summary: dict[str, dict[str, dict[str, float]]], title: str) -> Table:
    out = Table(title=title)
    out.add_column("trace")
    out.add_column("policy")
    for _, header in COLUMNS[:2]:
        out.add_column(header, justify="right")
        out.add_column("/Adaptive", justify="right")
        out.add_column("/max", justify="right")
    for _, header in COLUMNS[2:]:
        out.add_column(header, justify="right")
    for trace, by_policy in summary.items():
        adaptive = by_policy.get(ADAPTIVE, {})
        static_max = by_policy.get(STATIC_MAX, {})
        for label, m in by_policy.items():
            cells = [trace, label]
            for key, _ in COLUMNS[:2]:
                cells += [
                    fmt(m[key]),
                    ratio(m[key], adaptive.get(key, math.nan)),
                    ratio(m[key], static_max.get(key, math.nan)),
                ]
            cells += [fmt(m[key]) for key, _ in COLUMNS[2:]]
            out.add_row(*cells)
        any_run = next(iter(by_policy.values()))
        ideal = [
            trace,
            "ideal bound",
            fmt(any_run["ideal_makespan"]),
            "",
            "",
            fmt(any_run["ideal_worker_seconds"]),
            "",
            "",
            "0",
            fmt(any_run["ideal_burst_makespan_median"]),
            "0",
            fmt(any_run["ideal_time_to_first_worker"]),
            "",
            "0",
            "0",
            "0",
            "",
        ]
        out.add_row(*ideal, end_section=True)
    return out


def markdown(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    head = ["trace", "policy", "makespan s", "/Adaptive", "/max", "worker-s", "/Adaptive", "/max"]
    head += [h for _, h in COLUMNS[2:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for trace, by_policy in summary.items():
        adaptive = by_policy.get(ADAPTIVE, {})
        static_max = by_policy.get(STATIC_MAX, {})
        for label, m in by_policy.items():
            cells = [trace, label]
            for key, _ in COLUMNS[:2]:
                cells += [
                    fmt(m[key]),
                    ratio(m[key], adaptive.get(key, math.nan)),
                    ratio(m[key], static_max.get(key, math.nan)),
                ]
            cells += [fmt(m[key]) for key, _ in COLUMNS[2:]]
            lines.append("| " + " | ".join(cells) + " |")
        any_run = next(iter(by_policy.values()))
        lines.append(
            f"| {trace} | ideal bound | {fmt(any_run['ideal_makespan'])} | | | "
            f"{fmt(any_run['ideal_worker_seconds'])} | | | 0 | "
            f"{fmt(any_run['ideal_burst_makespan_median'])} | 0 | "
            f"{fmt(any_run['ideal_time_to_first_worker'])} | | 0 | 0 | 0 | |"
        )
    return "\n".join(lines) + "\n"


def plot(trace: Trace, records: dict[str, RunRecord], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    load_ax = ax.twinx()
    for label, record in records.items():
        times = [s[0] for s in record.samples]
        (line,) = ax.step(times, [s[2] for s in record.samples], where="post", label=label)
        load_ax.plot(
            times, [s[4] for s in record.samples], linestyle=":", alpha=0.6, color=line.get_color()
        )
    ax.set_xlabel("seconds since the trace started")
    ax.set_ylabel("registered workers")
    load_ax.set_ylabel("tasks submitted, not finished (dotted)")
    ax.set_title(f"{trace.name}: {trace.description}", fontsize=9)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def simulator_agreement(
    traces: list[Trace],
    specs: list[PolicySpec],
    summary: dict[str, dict[str, dict[str, float]]],
    settings: HarnessSettings,
    boot: float,
) -> dict[str, dict[str, dict[str, float]]]:
    """Simulate every trace x policy; relative error against the measured medians."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for trace in traces:
        for spec in specs:
            sim = simulate(
                trace,
                SimulationSettings(
                    policy=spec.policy,
                    minimum=settings.minimum,
                    maximum=settings.maximum,
                    options=dict(spec.options),
                    model=ModelSettings(threads=settings.threads, boot_delay=boot),
                ),
            ).metrics
            real = summary[trace.name][spec.label]
            out.setdefault(trace.name, {})[spec.label] = {
                "makespan": sim.makespan,
                "worker_seconds": sim.worker_seconds,
                "makespan_error": sim.makespan / real["makespan"] - 1,
                "worker_seconds_error": sim.worker_seconds / real["worker_seconds"] - 1,
            }
    return out


def agreement_table(agreement: dict[str, dict[str, dict[str, float]]], boot: float) -> Table:
    out = Table(title=f"simulator vs measured medians (model boot delay {boot:.2f} s)")
    for header in ("trace", "policy", "sim makespan", "error", "sim worker-s", "error"):
        out.add_column(header, justify="left" if header in ("trace", "policy") else "right")
    for trace, by_policy in agreement.items():
        for label, a in by_policy.items():
            out.add_row(
                trace,
                label,
                fmt(a["makespan"]),
                f"{a['makespan_error']:+.0%}",
                fmt(a["worker_seconds"]),
                f"{a['worker_seconds_error']:+.0%}",
            )
    return out


AGREEMENT_TARGET = 0.15
"""The issue's target: the simulator within 15 % of the real runs on the small traces."""


def ours_agreement_rows(
    agreement: dict[str, dict[str, dict[str, float]]],
    summary: dict[str, dict[str, dict[str, float]]],
) -> list[list[str]]:
    """Per trace, ours: simulated next to measured median, their ratio, and the verdict."""
    rows = []
    for trace, by_policy in agreement.items():
        sim, real = by_policy[OURS], summary[trace][OURS]
        cells = [trace]
        within = True
        for key in ("worker_seconds", "makespan"):
            cells += [fmt(sim[key]), fmt(real[key]), f"{sim[key] / real[key]:.2f}"]
            within = within and abs(sim[key] / real[key] - 1) <= AGREEMENT_TARGET
        cells.append("yes" if within else "NO")
        rows.append(cells)
    return rows


OURS_AGREEMENT_HEAD = [
    "trace",
    "sim worker-s",
    "measured",
    "sim/measured",
    "sim makespan s",
    "measured",
    "sim/measured",
    f"within ±{AGREEMENT_TARGET:.0%}",
]


def ours_agreement_table(rows: list[list[str]], boot: float) -> Table:
    out = Table(title=f"ours: simulator vs measured median (model boot delay {boot:.2f} s)")
    for header in OURS_AGREEMENT_HEAD:
        out.add_column(header, justify="left" if header == "trace" else "right")
    for row in rows:
        out.add_row(*row)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--traces", default=",".join(DEFAULT_TRACES))
    parser.add_argument("--quick", action="store_true", help="1 repetition of 2 short traces")
    parser.add_argument("--boot-delay", type=float, default=5.0)
    parser.add_argument("--minimum", type=int, default=1)
    parser.add_argument("--maximum", type=int, default=6)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument(
        "--no-suite", action="store_true", help="skip the simulated suite and the 1000-worker cost"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.traces = 1, ",".join(QUICK_TRACES)
    if args.reps < 1 or args.boot_delay < 0 or not 0 <= args.minimum <= args.maximum:
        parser.error("need --reps >= 1, --boot-delay >= 0 and 0 <= --minimum <= --maximum")
    if args.minimum < 1:
        parser.error("--minimum must be >= 1: static-min runs the trace on the minimum")
    logging.getLogger("distributed").setLevel(logging.ERROR)
    traces = [load_trace(HERE / "traces" / f"{name}.json") for name in args.traces.split(",")]
    settings = HarnessSettings(
        minimum=args.minimum, maximum=args.maximum, boot_delay=args.boot_delay
    )
    specs = policies(args.maximum, args.boot_delay)
    runs = schedule(traces, specs, args.reps)
    console = Console(width=200)
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        t.name: {s.label: [] for s in specs} for t in traces
    }
    first: dict[str, dict[str, RunRecord]] = {t.name: {} for t in traces}
    startup: list[float] = []
    started = time.time()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("bench", total=len(runs))
        for index, (rep, trace, spec) in enumerate(runs):
            progress.update(bar, description=f"rep {rep + 1} {trace.name:12s} {spec.label:10s}")
            record = asyncio.run(run_once(trace, spec, settings, run_id=str(index)))
            metrics = compute_metrics(
                record, trace, boot_delay=args.boot_delay, maximum=args.maximum, threads=1
            )
            results[trace.name][spec.label].append(metrics.as_dict())
            if spec.label != STATIC_MAX:  # one worker warming up alone: its process start-up
                startup += [r - q for _, q, r, _ in record.instances if q < 0 and r is not None]
            first[trace.name].setdefault(spec.label, record)
            progress.advance(bar)
    elapsed = time.time() - started
    summary = summarize(results)
    boot = args.boot_delay + (statistics.median(startup) if startup else 0.0)
    agreement = simulator_agreement(traces, specs, summary, settings, boot)
    for trace in traces:  # the reference, simulated at the measured boot delay
        oracle = simulate(
            trace,
            SimulationSettings(
                policy=CLAIRVOYANT,
                minimum=settings.minimum,
                maximum=settings.maximum,
                model=ModelSettings(threads=settings.threads, boot_delay=boot),
            ),
        ).metrics.as_dict()
        oracle["scheduler_ms_per_poll"] = math.nan
        summary[trace.name][f"{suite.ORACLE} (sim)"] = oracle
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "command": "make bench" if not args.quick else "make bench-quick",
                "reps": args.reps,
                "boot_delay": args.boot_delay,
                "minimum": args.minimum,
                "maximum": args.maximum,
                "threads": 1,
                "elapsed_seconds": elapsed,
                "runs": results,
                "medians": summary,
                "simulator": {"boot_delay": boot, "agreement": agreement},
            },
            indent=2,
        )
    )
    for trace in traces:
        plot(trace, first[trace.name], args.out / f"{trace.name}.png")
    title = (
        f"medians of {args.reps} runs; boot delay {args.boot_delay:g} s; "
        f"minimum {args.minimum}, maximum {args.maximum}, 1 thread per worker"
    )
    console.print(table(summary, title))
    console.print(agreement_table(agreement, boot))
    rows = ours_agreement_rows(agreement, summary)
    console.print(ours_agreement_table(rows, boot))
    ours_md = ["| " + " | ".join(OURS_AGREEMENT_HEAD) + " |", "|" + "---|" * len(rows[0])]
    ours_md += ["| " + " | ".join(row) + " |" for row in rows]
    (args.out / "summary.md").write_text(
        f"{title}; {elapsed / 60:.1f} min\n\n"
        + markdown(summary)
        + f"\nours, simulator vs measured median (model boot delay {boot:.2f} s)\n\n"
        + "\n".join(ours_md)
        + "\n"
    )
    suite_md = ""
    if not args.no_suite:
        started_suite = time.time()
        rows = suite.run_suite(
            suite.load(suite.SHORT_TRACES + suite.LONG_TRACES), suite.BOOT_DELAYS
        )
        verdicts = suite.verdicts(rows)
        cells = suite.suite_cells(rows)
        checks = suite.verdict_cells(verdicts)
        console.print(suite.rich_table("simulated suite", suite.SUITE_HEAD, cells))
        console.print(suite.rich_table("ours against the targets", suite.VERDICT_HEAD, checks))
        summary_lines = suite.summary_lines(verdicts)
        cost = asyncio.run(scheduler_cost.measure(1000, 20))
        summary_lines += scheduler_cost.lines(cost)
        for line in summary_lines:
            console.print(line)
        console.print(f"simulated suite and scheduler cost in {time.time() - started_suite:.0f} s")
        suite_md = (
            "\nsimulated suite (minimum 1; maximum 6 on the short traces, 20 on the long ones)\n\n"
            + suite.markdown(suite.SUITE_HEAD, cells)
            + "\nours against the targets\n\n"
            + suite.markdown(suite.VERDICT_HEAD, checks)
            + "\n"
            + "\n".join(f"- {line}" for line in summary_lines)
            + "\n"
        )
        data = json.loads((args.out / "results.json").read_text())
        data["suite"] = [
            {"trace": r.trace, "boot_delay": r.boot, "policy": r.label, **r.metrics.as_dict()}
            for r in rows
        ]
        data["scheduler_cost"] = {
            "workers": cost.workers,
            "ours_ms_per_tick": cost.ours_ms,
            "per_handler_ms": cost.per_handler_ms,
            "adaptive_target_ms": cost.adaptive_target_ms,
        }
        (args.out / "results.json").write_text(json.dumps(data, indent=2))
        with (args.out / "summary.md").open("a") as out:
            out.write(suite_md)
    console.print(f"{len(runs)} runs in {elapsed / 60:.1f} min; results in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
