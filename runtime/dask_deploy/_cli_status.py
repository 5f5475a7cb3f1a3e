"""``dask-deploy status``: what a deployment runs and what its scaler is doing, and why.

Everything is read: the scheduler's workers (``identity``), what the scaler last published
in the scheduler (its policy, target, counts and last decisions with their reasons) and the
instances the resource manager reports. Nothing is changed. The JSON fields (``-o json``)
are documented in docs/python-api.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from . import lifecycle

HELP = "Show a deployment: scheduler, workers, the scaler's target and last decisions, instances."
#: Decisions shown by the text output (JSON carries every one the scaler published).
DECISIONS_SHOWN = 8


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``status`` options."""
    parser.add_argument("name", help="the deployment, as `dask-deploy up` named it")
    parser.add_argument(
        "-o",
        "--output",
        choices=("text", "json"),
        default="text",
        help="text (default) or json (one object, fields in docs/python-api.md)",
    )


async def gather(record: lifecycle.DeploymentRecord) -> dict[str, Any]:
    """The status of ``record`` as one JSON-ready mapping."""
    result: dict[str, Any] = {
        "name": record.name,
        "backend": record.backend,
        "folder": record.folder,
        "created_at": record.created_at,
        "scheduler": {"address": record.scheduler_address, "reachable": False, "error": None},
        "workers": [],
        "scaler": None,
        "instances": None,
        "instances_error": None,
    }
    if record.scheduler_address is not None:
        comm = lifecycle.scheduler_rpc(record)
        try:
            identity = await comm.identity()
            result["scheduler"]["reachable"] = True
            result["workers"] = sorted(
                (
                    {
                        "name": str(info.get("name", address)),
                        "address": address,
                        "status": str(info.get("status", "")),
                    }
                    for address, info in identity.get("workers", {}).items()
                ),
                key=lambda w: w["name"],
            )
            result["scaler"] = await lifecycle.published_status(comm, record.name)
        except OSError as error:
            result["scheduler"]["error"] = str(error) or type(error).__name__
        finally:
            await comm.close_rpc()
    try:
        instances = await lifecycle.resource_instances(record)
        result["instances"] = [{"name": i.name, "state": i.state.value} for i in instances]
    except Exception as error:  # the resource manager's own words, not a traceback
        result["instances_error"] = f"{type(error).__name__}: {error}"
    return result


def _clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds))


def as_text(status: dict[str, Any]) -> str:
    """The human-readable form of :func:`gather`'s mapping."""
    lines = [
        f"deployment  {status['name']} on {status['backend']}, up since "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(status['created_at']))}"
    ]
    scheduler = status["scheduler"]
    reach = "reachable" if scheduler["reachable"] else f"UNREACHABLE ({scheduler['error']})"
    lines.append(f"scheduler   {scheduler['address']} ({reach})")
    workers = status["workers"]
    names = ", ".join(w["name"] for w in workers)
    lines.append(f"workers     {len(workers)}" + (f": {names}" if names else ""))
    scaler = status["scaler"]
    if scaler is None:
        lines.append("scaler      no status published yet (starting, or not running)")
    else:
        policy = scaler["policy"]
        age = time.time() - scaler["updated_at"]
        lines.append(
            f"scaler      {policy['name']} minimum={policy['minimum']} maximum={policy['maximum']}"
            f"; target {scaler['target']}; requested {scaler['requested']}, observed "
            f"{scaler['observed']}, pending {scaler['pending']} (as of {age:.1f}s ago)"
        )
        if scaler.get("metrics"):
            lines.append(f"            metrics on {scaler['metrics']}")
        if scaler.get("refused_request"):
            lines.append(f"            refused request: {scaler['refused_request']['error']}")
    if status["instances"] is None:
        lines.append(f"instances   unknown: {status['instances_error']}")
    else:
        shown = ", ".join(f"{i['name']} {i['state']}" for i in status["instances"])
        lines.append(f"instances   {len(status['instances'])}" + (f": {shown}" if shown else ""))
    if scaler is not None and scaler["decisions"]:
        lines.append(f"decisions   (last {min(DECISIONS_SHOWN, len(scaler['decisions']))})")
        for decision in scaler["decisions"][-DECISIONS_SHOWN:]:
            lines.append(f"  {_clock(decision['time'])} {decision['line']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the status; exit 1 when the scheduler cannot be reached."""
    record = lifecycle.DeploymentRecord.load(args.name)
    status = asyncio.run(gather(record))
    if args.output == "json":
        print(json.dumps(status, indent=2, allow_nan=False))
    else:
        print(as_text(status))
    return 0 if status["scheduler"]["reachable"] else 1
