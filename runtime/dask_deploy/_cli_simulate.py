"""``dask-deploy simulate``: run a policy on a trace on a virtual clock and print its metrics."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import yaml

from ._errors import SettingsError, UserInputError
from .simulate import (
    CLAIRVOYANT,
    DISTRIBUTED_ADAPTIVE,
    SimulationSettings,
    make_policy,
    simulate,
)
from .simulate.engine import ModelSettings
from .simulate.trace import load_trace

HELP = (
    "Simulate a scaling policy on a workload trace (virtual clock, same policy code as the "
    "sidecar) and print makespan, worker-seconds and the other benchmark metrics."
)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the simulate options to ``parser``."""
    parser.add_argument(
        "--policy",
        default="adaptive",
        help=(
            "a policy of the registry (adaptive, fixed, plug-ins), "
            f"{DISTRIBUTED_ADAPTIVE}, or {CLAIRVOYANT} (reads the future; a reference only)"
        ),
    )
    parser.add_argument("--trace", required=True, metavar="FILE", help="trace file (JSON)")
    parser.add_argument("--minimum", type=int, default=1, help="policy minimum (default 1)")
    parser.add_argument("--maximum", type=int, default=6, help="policy maximum (default 6)")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a policy option, value parsed as YAML (repeatable), e.g. workers=6",
    )
    parser.add_argument("--threads", type=int, default=1, help="threads per worker (default 1)")
    parser.add_argument(
        "--boot-delay", type=float, default=5.0, help="mean seconds from request to registration"
    )
    parser.add_argument(
        "--boot-jitter", type=float, default=0.1, help="boot delay spread, fraction of the mean"
    )
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between ticks")
    parser.add_argument("--seed", type=int, default=0, help="seed of the boot-delay draws")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")


def _options(items: list[str]) -> dict[str, object]:
    options: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserInputError(f"--option: {item!r} is not KEY=VALUE")
        options[key] = yaml.safe_load(value)
    return options


def settings_from_args(args: argparse.Namespace) -> SimulationSettings:
    """Validate the flags into one frozen settings object (exit 2 naming the flag)."""
    if args.minimum < 0:
        raise SettingsError("--minimum", args.minimum, "an integer >= 0")
    if args.maximum < max(args.minimum, 1):
        raise SettingsError("--maximum", args.maximum, "an integer >= --minimum and >= 1")
    if args.threads < 1:
        raise SettingsError("--threads", args.threads, "an integer >= 1")
    if not math.isfinite(args.boot_delay) or args.boot_delay < 0:
        raise SettingsError("--boot-delay", args.boot_delay, "a number of seconds >= 0")
    if not 0 <= args.boot_jitter < 1:
        raise SettingsError("--boot-jitter", args.boot_jitter, "a fraction 0 <= j < 1")
    if not args.interval > 0:
        raise SettingsError("--interval", args.interval, "a number of seconds > 0")
    settings = SimulationSettings(
        policy=args.policy,
        minimum=args.minimum,
        maximum=args.maximum,
        options=_options(args.option),
        interval=args.interval,
        model=ModelSettings(
            threads=args.threads,
            boot_delay=args.boot_delay,
            boot_jitter=args.boot_jitter,
            seed=args.seed,
        ),
    )
    if settings.policy not in (DISTRIBUTED_ADAPTIVE, CLAIRVOYANT):
        make_policy(settings)  # unknown policy or bad options: exit 2 before running
    return settings


def _finite(metrics: dict[str, float]) -> dict[str, float | None]:
    """NaN and infinities (a metric with nothing to measure) as null: JSON has no NaN."""
    return {k: v if math.isfinite(v) else None for k, v in metrics.items()}


def run(args: argparse.Namespace) -> int:
    """Simulate and print the metrics, the simulated cluster's size and the wall time."""
    settings = settings_from_args(args)
    trace = load_trace(Path(args.trace))
    result = simulate(trace, settings)
    metrics = result.metrics.as_dict()
    if args.json:
        print(
            json.dumps(
                {
                    "trace": trace.name,
                    "policy": settings.policy,
                    "tasks": trace.task_count,
                    "workers_launched": len(result.record.instances),
                    "completed": result.record.completed,
                    "wall_seconds": result.wall_seconds,
                    "metrics": _finite(metrics),
                },
                indent=2,
                allow_nan=False,
            )
        )
    else:
        print(
            f"trace {trace.name}: {trace.task_count} tasks; policy {settings.policy} "
            f"(minimum {settings.minimum}, maximum {settings.maximum}); "
            f"{len(result.record.instances)} workers launched; {result.ticks} ticks"
        )
        for key, value in metrics.items():
            print(f"  {key:30s} {value:12.3f}")
        print(f"simulated in {result.wall_seconds:.2f} s wall time")
    if not result.record.completed:
        print("warning: the trace did not finish within the time limit (no worker to run it?)")
        return 1
    return 0
