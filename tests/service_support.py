"""The shared services a test run started (dockerd, the HTCondor pool, SLURM, Grid Engine, the
sshd servers), stopped once, when the whole run ends.

A session fixture that starts one of them records here how to stop it instead of stopping it
in its own teardown. Under xdist every worker has its own session, and one service may serve
several groups (the Docker engine runs the docker group's containers and the HTCondor pool):
the worker that happened to start it must not stop it while another worker still runs tests on
it. Each worker hands its records to the controller, which stops everything after the last
worker ended; a run in one process stops them at its own end. A service that was already
running before the run is never recorded, so it is left as it was.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: The pool runs in the Docker engine, so it is stopped first, then the engine; the other
#: services are independent, so each chain is stopped beside the others.
STOP_CHAINS = (("htcondor-down.sh", "docker-down.sh"),)

#: down script -> its arguments (hosts for sshd-down.sh); filled by the session fixtures.
STARTED: dict[str, list[str]] = {}


def stop_at_end(script: str, *args: str) -> None:
    """Have the end of the run call ``scripts/<script> args...``."""
    recorded = STARTED.setdefault(script, [])
    recorded.extend(arg for arg in args if arg not in recorded)


def merge(started: dict[str, list[str]]) -> None:
    """Add a worker's records (``workeroutput``) to this process's."""
    for script, args in started.items():
        stop_at_end(script, *args)


def stop_started() -> list[str]:
    """Stop what the run started, pool before engine, the rest at the same time; returns one
    line per script run, in the order they were run within each chain."""
    started = dict(STARTED)
    STARTED.clear()
    chains: list[list[str]] = []
    for chain in STOP_CHAINS:
        chains.append([script for script in chain if script in started])
    chained = {script for chain in STOP_CHAINS for script in chain}
    chains += [[script] for script in sorted(started) if script not in chained]
    with ThreadPoolExecutor(max_workers=max(1, len(chains))) as pool:
        said = pool.map(lambda chain: [stop(script, started[script]) for script in chain], chains)
        return [line for lines in said for line in lines]


def run_script(
    script: str, *args: str, timeout: float, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run scripts/``script`` with ``args``, its output captured, whatever its exit code."""
    return subprocess.run(
        [str(REPO / "scripts" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def stop(script: str, args: list[str]) -> str:
    done = run_script(script, *args, timeout=300)
    outcome = "ok" if done.returncode == 0 else f"exit {done.returncode}: {done.stderr[-300:]}"
    return f"scripts/{script} {' '.join(args)}".rstrip() + f": {outcome}"
