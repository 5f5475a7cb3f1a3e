"""A worker stopped from outside (SIGTERM: eviction, walltime, ``docker stop``) hands the
results it holds to another worker through the scheduler before it exits.

distributed alone closes the worker at once on SIGTERM and the result is lost (recomputed);
with ``dask_deploy.worker_preload`` loaded into the nanny and the worker, it survives.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client, Scheduler
from scaler_support import Deployment, counter

pytestmark = pytest.mark.integration

PRELOADS = [
    "--preload-nanny",
    "dask_deploy.worker_preload",
    "--preload",
    "dask_deploy.worker_preload",
]


@pytest.fixture
def workers(scheduler: Scheduler, tmp_path: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    started: dict[str, subprocess.Popen[bytes]] = {}
    for name in ("keeper", "leaver"):
        with (tmp_path / f"{name}.log").open("wb") as log:
            started[name] = subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", scheduler.address,
                 "--name", name, "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard",
                 "--memory-limit", "512MiB", *PRELOADS],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
    yield started
    for process in started.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.parametrize(
    "whom",
    [
        "nanny",  # docker stop / Kubernetes / Marathon: PID 1 (tini) passes it to the nanny
        "group",  # SLURM's walltime and scancel, kill on the process group: every process
        "group-int",  # LSF's bkill and run limit: SIGINT, then SIGTERM, to the whole job
    ],
)
async def test_a_held_result_survives_an_outside_sigterm_of_its_worker(
    deployment: Deployment,
    workers: dict[str, subprocess.Popen[bytes]],
    whom: str,
    tmp_path: Path,
) -> None:
    scheduler = deployment.scheduler
    await deployment.wait_for(
        "both workers", lambda: deployment.connected() == {"keeper", "leaver"}
    )
    leaver = next(ws for ws in scheduler.workers.values() if ws.name == "leaver")
    async with Client(scheduler.address, asynchronous=True) as client:
        future = client.submit(
            sum, [1, 1], workers=[leaver.address], allow_other_workers=True, key="held"
        )
        assert await future == 2
        pid = workers["leaver"].pid
        if whom == "nanny":
            os.kill(pid, signal.SIGTERM)
        elif whom == "group":
            os.killpg(pid, signal.SIGTERM)
        else:
            os.killpg(pid, signal.SIGINT)
            os.killpg(pid, signal.SIGTERM)
        await deployment.wait_for(
            "the leaver is gone", lambda: deployment.connected() == {"keeper"}
        )
        await deployment.wait_for(
            "its process exited", lambda: workers["leaver"].poll() is not None
        )
        assert await future == 2
        log = (tmp_path / "leaver.log").read_text()
        assert counter(scheduler).lost["held"] == 0, f"the result was lost and recomputed:\n{log}"
        assert counter(scheduler).computed["held"] == 1
        assert "handed tcp://127.0.0.1:" in log, log
