"""``dask-deploy down``: retire the workers through the scaler, then stop everything."""

from __future__ import annotations

import argparse
import asyncio

from . import lifecycle

HELP = "Take a deployment down: retire its workers through the scaler, stop scaler and scheduler."


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``down`` options."""
    parser.add_argument("name", help="the deployment, as `dask-deploy up` named it")


def run(args: argparse.Namespace) -> int:
    """Retire, stop, forget; say so."""
    record = lifecycle.DeploymentRecord.load(args.name)
    asyncio.run(lifecycle.retire_and_stop(record))
    print(f"deployment {record.name} is down")
    return 0
