"""A rendered SLURM deployment, submitted with sbatch as a user does, for the end-to-end tests.

``submitted(...)`` renders the slurm templates with ``deployment_values(...)``, runs
``sbatch scheduler-job.sh`` in the rendered folder and, whatever the test did, cancels every
job of the deployment and prints the job logs and SLURM's (pytest shows them on failure). What
every batch family shares is in tests/batch_support.py.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import batch_support
from batch_support import BatchDeployment, deployment_values, worker_names
from slurm_support import Slurm

LIVE_STATES = "PENDING,CONFIGURING,RUNNING,COMPLETING,SUSPENDED,REQUEUED"
__all__ = ["Deployment", "deployment_values", "squeue", "submitted", "worker_names"]


def squeue(*args: str) -> list[tuple[str, str, str]]:
    """``(job id, job name, state)`` of the jobs squeue lists for these arguments."""
    output = subprocess.run(
        ["squeue", "--noheader", "--format=%i|%j|%T", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [tuple(line.split("|")) for line in output.splitlines() if line]  # type: ignore[misc]


class Deployment(BatchDeployment):
    def worker_jobs(self, states: str = LIVE_STATES) -> dict[str, str]:
        """Job id -> state of this deployment's worker jobs in these states."""
        jobs = squeue(f"--name={self.worker_job_name}", f"--states={states}")
        return {job_id: state for job_id, _, state in jobs}

    def all_live_jobs(self) -> list[tuple[str, str, str]]:
        names = f"--name={self.name}-scheduler,{self.worker_job_name}"
        return squeue(names, f"--states={LIVE_STATES}")


def _sbatch(folder: Path) -> str:
    sbatch = subprocess.run(
        ["sbatch", "--parsable", "scheduler-job.sh"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    return sbatch.stdout.strip().split(";")[0]


def _cancel_everything(deployed: BatchDeployment) -> None:
    # One name per scancel: its --name takes a single job name (squeue's takes a list), and
    # a list matched nothing, so a test's jobs kept their CPUs into the next tests.
    for job_name in (f"{deployed.name}-scheduler", deployed.worker_job_name):
        subprocess.run(["scancel", f"--name={job_name}"], check=False)


@contextmanager
def submitted(
    slurm: Slurm,
    values: dict[str, Any],
    folder: Path,
    edit: Callable[[Path], None] = lambda folder: None,
) -> Iterator[Deployment]:
    """Render ``values`` into ``folder``, let ``edit`` change the rendered files as a user may,
    sbatch the scheduler job, cancel everything after."""
    with batch_support.submitted(
        "slurm",
        values,
        folder,
        submit=_sbatch,
        clean_up=_cancel_everything,
        edit=edit,
        diagnose=slurm.log_tails,
    ) as deployed:
        yield Deployment(deployed.name, deployed.folder, deployed.scheduler_job)


def idle_cpus() -> int:
    """CPUs no job holds right now (``sinfo %C`` prints allocated/idle/other/total)."""
    counts = subprocess.run(
        ["sinfo", "--noheader", "--format=%C"], capture_output=True, text=True, check=True
    ).stdout.split("/")
    return int(counts[1])


@contextmanager
def cluster_full_but(free: int, folder: Path) -> Iterator[str]:
    """Hold every idle CPU but ``free`` with one long job (cancelled at the end): later jobs
    wait in the queue for ``Resources`` as on a busy cluster. Yields the blocker's job id."""
    # Jobs of an earlier test (cancelled, still completing) would free their CPUs later and
    # leave more room than ``free``: size the blocker on a quiet cluster.
    quiet_until = time.monotonic() + 120
    while leftovers := squeue(f"--states={LIVE_STATES}"):
        assert time.monotonic() < quiet_until, f"SLURM is not quiet, jobs left: {leftovers}"
        time.sleep(0.5)
    taken = idle_cpus() - free
    assert taken > 0, f"only {taken + free} CPUs idle, wanted to keep {free} free"
    blocker = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--job-name=blocker-{folder.name}",
            f"--ntasks={taken}",
            "--cpus-per-task=1",
            "--mem-per-cpu=1M",
            f"--output={folder}/blocker-%j.out",
            "--wrap=sleep 900",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        for _ in range(120):
            if squeue(f"--jobs={blocker}", "--states=RUNNING"):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"the blocker job {blocker} did not start")
        yield blocker
    finally:
        subprocess.run(["scancel", blocker], check=False)
