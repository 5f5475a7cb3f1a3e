"""``dask-deploy up``: launch a deployment (scheduler and scaler) and leave it running."""

from __future__ import annotations

import argparse
from typing import Any

from . import lifecycle
from .values import SET_SYNTAX, deep_merge, load_values_file

HELP = "Launch a scheduler and its scaler on a resource manager, and leave them running."


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``up`` options."""
    parser.add_argument("backend", help="where to run: local, or a backend with templates")
    parser.add_argument(
        "--values",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML file merged over the backend's defaults (repeatable; later files win)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        dest="sets",
        help=f"one value over the files (repeatable): {SET_SYNTAX}",
    )
    parser.add_argument("--name", help="deployment name (default: dask- and 8 hex digits)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the scheduler's address (default 120)",
    )


def merged_values_files(paths: list[str]) -> dict[str, Any] | None:
    """The values files merged in order (later files win), or None without any."""
    if not paths:
        return None
    merged: dict[str, Any] = {}
    for path in paths:
        merged = deep_merge(merged, load_values_file(path))
    return merged


def run(args: argparse.Namespace) -> int:
    """Launch, print where it runs and how to look at it."""
    record = lifecycle.up(
        args.backend,
        merged_values_files(args.values),
        args.sets,
        args.name,
        timeout=args.timeout,
    )
    print(f"deployment {record.name} is up on {record.backend}")
    print(f"scheduler: {record.scheduler_address}")
    print(f"files and logs: {record.folder}")
    print(f"next: dask-deploy status {record.name}; dask-deploy down {record.name}")
    return 0
