"""A rendered Grid Engine deployment, submitted with qsub as a user does, for the e2e tests.

``submitted(...)`` renders the sge templates with ``deployment_values(...)``, runs
``qsub scheduler-job.sh`` in the rendered folder and, whatever the test did, deletes every job
of the deployment and prints the job logs and Grid Engine's messages (pytest shows them on
failure). What every batch family shares is in tests/batch_support.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import batch_support
from batch_support import BatchDeployment, deployment_values, worker_names
from sge_support import GridEngine

__all__ = ["Deployment", "deployment_values", "qstat_jobs", "submitted", "worker_names"]


def qstat_jobs() -> list[tuple[str, str, str]]:
    """``(job id, job name, state)`` of every job of this user that qstat lists."""
    output = subprocess.run(["qstat", "-xml"], capture_output=True, text=True, check=True).stdout
    return [
        (job.findtext("JB_job_number", ""), job.findtext("JB_name", ""), job.findtext("state", ""))
        for job in ElementTree.fromstring(output).iter("job_list")
    ]


class Deployment(BatchDeployment):
    def worker_jobs(self) -> dict[str, str]:
        """Job id -> state of this deployment's worker jobs that Grid Engine still lists."""
        return {job: state for job, name, state in qstat_jobs() if name == self.worker_job_name}

    def all_live_jobs(self) -> list[tuple[str, str, str]]:
        names = {f"{self.name}-scheduler", self.worker_job_name}
        return [job for job in qstat_jobs() if job[1] in names]

    def kill_scheduler_job(self) -> None:
        """SIGKILL every process of the scheduler job, as a crash of its host would end them."""
        for proc in Path("/proc").iterdir():
            try:
                environ = (proc / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"JOB_ID={self.scheduler_job}".encode() in environ:
                try:
                    os.kill(int(proc.name), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass


def _qsub(folder: Path) -> str:
    qsub = subprocess.run(
        ["qsub", "-terse", "scheduler-job.sh"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    return qsub.stdout.strip()


def _delete_everything(deployed: BatchDeployment) -> None:
    names = {f"{deployed.name}-scheduler", deployed.worker_job_name}
    left = [job for job, name, _ in qstat_jobs() if name in names]
    if left:
        subprocess.run(["qdel", "-f", *left], check=False, capture_output=True)


@contextmanager
def submitted(sge: GridEngine, values: dict[str, Any], folder: Path) -> Iterator[Deployment]:
    """Render ``values`` into ``folder``, qsub the scheduler job, delete everything after."""
    with batch_support.submitted(
        "sge",
        values,
        folder,
        submit=_qsub,
        clean_up=_delete_everything,
        diagnose=sge.log_tails,
    ) as deployed:
        yield Deployment(deployed.name, deployed.folder, deployed.scheduler_job)
