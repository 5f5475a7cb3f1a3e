"""End to end with real PBS commands: SLURM's Torque-compatible qsub/qstat/qdel
(Debian's slurm-wlm-torque, unpacked by scripts/torque-commands.sh) on the project's SLURM.

The user runs `qsub scheduler-job.sh`; its #PBS lines are read by sbatch. The scaler in it
submits worker jobs with `qsub -N`, lists them with `qstat -f` and deletes them with `qdel`.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from batch_support import (
    BatchDeployment,
    burst,
    connect,
    deployment_values,
    submitted,
    worker_names,
)
from dask_deploy.backends import pbs
from dask_deploy.backends.batch import BatchSettings, run_command
from process_support import wait_for
from slurm_support import Slurm

pytestmark = pytest.mark.pbs


def qstat_full() -> dict[str, dict[str, str]]:
    return pbs.full_display(subprocess.run(["qstat", "-f"], capture_output=True, text=True).stdout)


class Deployment(BatchDeployment):
    def worker_jobs(self) -> dict[str, str]:
        """Job id -> job_state of this deployment's worker jobs that have not ended."""
        return {
            job: attributes["job_state"]
            for job, attributes in qstat_full().items()
            if attributes.get("Job_Name") == self.worker_job_name
            and attributes.get("job_state") in ("Q", "R")
        }


def _qsub(folder: Path) -> str:
    qsub = subprocess.run(
        ["qsub", "scheduler-job.sh"], cwd=folder, capture_output=True, text=True, check=True
    )
    return pbs.parse_job_id(qsub.stdout)


def _delete_everything(deployed: BatchDeployment) -> None:
    left = [
        job
        for job, attributes in qstat_full().items()
        if attributes.get("Job_Name", "").startswith(deployed.name)
        and attributes.get("job_state") in ("Q", "R")
    ]
    if left:
        subprocess.run(["qdel", *left], capture_output=True)


@pytest.fixture
def deployment(
    slurm: Slurm, torque_commands: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Deployment]:
    monkeypatch.setenv("PATH", f"{torque_commands}{os.pathsep}{os.environ['PATH']}")
    scaler = {"minimum": 1, "maximum": 3, "scale_down_window": 4, "startup_timeout": 120}
    values = deployment_values(f"e2e-{uuid.uuid4().hex[:6]}", scaler)
    with submitted(
        "pbs",
        values,
        tmp_path / "rendered",
        submit=_qsub,
        clean_up=_delete_everything,
        diagnose=slurm.log_tails,
    ) as deployed:
        yield Deployment(deployed.name, deployed.folder, deployed.scheduler_job)


async def test_a_listing_of_no_job_is_empty_not_an_error(
    slurm: Slurm, torque_commands: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SLURM's qstat exits 153 when it lists no job at all, where Torque lists nothing and
    exits 0: a scaler's first listing on an empty cluster failed with "qstat -f exited 153".
    Here the listing asks for one id nobody has, which that qstat answers the same way."""
    monkeypatch.setenv("PATH", f"{torque_commands}{os.pathsep}{os.environ['PATH']}")
    unknown = "1999999999"
    listed = subprocess.run(["qstat", "-f", unknown], capture_output=True, text=True)
    assert (listed.returncode, listed.stdout) == (pbs.NO_JOB_LISTED, "")
    settings = BatchSettings("nobody", tmp_path / "worker-job.sh", "nobody-worker", ())
    status = pbs.status_command(settings)
    assert await run_command(replace(status, argv=(*status.argv, unknown)), timeout=30) == ""


def tear_down(deployment: Deployment) -> None:
    subprocess.run(["qdel", deployment.scheduler_job], check=True, capture_output=True)
    wait_for("the scaler deletes its workers on the way out", lambda: not deployment.worker_jobs())


def test_burst_scales_up_and_idle_deletes_exactly_the_retired_jobs(
    deployment: Deployment,
) -> None:
    with connect(deployment) as client:
        wait_for("the minimum of one worker registers", lambda: len(worker_names(client)) == 1)
        sleeps, squares = burst(client, 40)
        seen: set[str] = set()

        def scaled_up() -> bool:
            seen.update(deployment.worker_jobs())
            return len(worker_names(client)) >= 2

        wait_for("the burst brings more workers", scaled_up)
        assert worker_names(client) <= seen
        client.gather(sleeps)
        assert client.gather(squares) == [x * x for x in range(40)]

        def every_live_job_is_a_worker() -> set[str]:
            live, names = set(deployment.worker_jobs()), worker_names(client)
            seen.update(live)
            assert len(live) <= 3, f"more worker jobs than the maximum: {live}"
            return names if live == names else set()

        busy = wait_for("every live worker job has registered", every_live_job_is_a_worker)
        before_idle = set(seen)

        def down_to_minimum() -> bool:
            seen.update(deployment.worker_jobs())
            return len(worker_names(client)) == 1

        wait_for("the workers go down to the minimum", down_to_minimum)
        remaining = worker_names(client)
        assert remaining <= busy

        def only_the_remaining_job_is_live() -> bool:
            live = set(deployment.worker_jobs())
            seen.update(live)
            return live == remaining

        wait_for("only the remaining worker's job is live", only_the_remaining_job_is_live)
        assert seen == before_idle, "a job was submitted while going idle"
        assert client.gather(squares) == [x * x for x in range(40)]
    tear_down(deployment)


def test_worker_job_deleted_from_outside_is_replaced(deployment: Deployment) -> None:
    with connect(deployment) as client:
        sleeps, squares = burst(client, 60)
        wait_for("the burst brings three workers", lambda: len(worker_names(client)) == 3)
        before = set(deployment.worker_jobs())
        victim = sorted(worker_names(client))[0]
        subprocess.run(["qdel", victim], check=True, capture_output=True)
        new_jobs = wait_for(
            "the scaler submits a replacement", lambda: set(deployment.worker_jobs()) - before
        )
        wait_for("the replacement registers", lambda: worker_names(client) & new_jobs)
        # Its worker may still be handing its results over (SIGTERM) when the replacement,
        # submitted as soon as the job was seen ending, registers.
        wait_for("the removed job's worker leaves", lambda: victim not in worker_names(client))
        client.gather(sleeps)
        assert client.gather(squares) == [x * x for x in range(60)]
    tear_down(deployment)
