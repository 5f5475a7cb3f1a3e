"""A rendered SLURM deployment, submitted with sbatch as a user does, for the end-to-end tests.

``submitted(...)`` renders the slurm templates with ``deployment_values(...)``, runs
``sbatch scheduler-job.sh`` in the rendered folder and, whatever the test did, cancels every
job of the deployment and prints the job logs and SLURM's (pytest shows them on failure).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from distributed import Client

from slurm_support import Slurm

VENV = Path(sys.executable).parent.parent
LIVE_STATES = "PENDING,CONFIGURING,RUNNING,COMPLETING,SUSPENDED,REQUEUED"


def squeue(*args: str) -> list[tuple[str, str, str]]:
    """``(job id, job name, state)`` of the jobs squeue lists for these arguments."""
    output = subprocess.run(
        ["squeue", "--noheader", "--format=%i|%j|%T", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [tuple(line.split("|")) for line in output.splitlines() if line]  # type: ignore[misc]


@dataclass
class Deployment:
    name: str
    folder: Path
    scheduler_job: str

    @property
    def worker_job_name(self) -> str:
        return f"{self.name}-worker"

    def worker_jobs(self, states: str = LIVE_STATES) -> dict[str, str]:
        """Job id -> state of this deployment's worker jobs in these states."""
        jobs = squeue(f"--name={self.worker_job_name}", f"--states={states}")
        return {job_id: state for job_id, _, state in jobs}

    def all_live_jobs(self) -> list[tuple[str, str, str]]:
        names = f"--name={self.name}-scheduler,{self.worker_job_name}"
        return squeue(names, f"--states={LIVE_STATES}")

    def logs(self) -> str:
        return "\n".join(
            f"----- {log.name}\n{log.read_text(errors='replace')[-4000:]}"
            for log in sorted(self.folder.glob("*.log"))
        )


def worker_names(client: Client) -> set[str]:
    # `dask worker` turns a numeric --name into an int: compare as text, like the scheduler does.
    return {str(w["name"]) for w in client.scheduler_info()["workers"].values()}


def deployment_values(name: str, scaler: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """Values for a deployment on 127.0.0.1 running this venv, with short scaler timings.

    ``scaler`` holds the keys a test chooses (bounds, window, startup timeout); ``sections``
    adds whole top-level sections such as ``tls``.
    """
    return {
        "deployment": name,
        "python": {"venv": str(VENV)},
        "scheduler": {"host": "127.0.0.1", "dashboard_port": None, "memory_mib": 512},
        "worker": {
            "host": "127.0.0.1",
            "threads": 1,
            "memory_mib": 512,
            "walltime_minutes": 10,
            "handover_margin": 60,
            "lifetime_margin": 30,
            "lifetime_stagger": 0,
            "death_timeout": 20,
        },
        "scaler": {"interval": 0.5, "metrics_port": None, "cleanup_on_exit": True, **scaler},
        # Plain TCP unless a test asks for TLS (the default): these tests' clients hold no
        # certificates. test_slurm_tls.py runs the default.
        "tls": {"enabled": False},
        **sections,
    }


def render(values: dict[str, Any], out: Path) -> None:
    values_file = out.parent / f"{out.name}-values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    command = [str(VENV / "bin" / "dask-deploy"), "render", "--backend", "slurm"]
    rendered = subprocess.run(
        [*command, "--values", str(values_file), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert rendered.returncode == 0, rendered.stderr


@contextmanager
def submitted(
    slurm: Slurm,
    values: dict[str, Any],
    folder: Path,
    edit: Callable[[Path], None] = lambda folder: None,
) -> Iterator[Deployment]:
    """Render ``values`` into ``folder``, let ``edit`` change the rendered files as a user may,
    sbatch the scheduler job, cancel everything after."""
    render(values, folder)
    edit(folder)
    sbatch = subprocess.run(
        ["sbatch", "--parsable", "scheduler-job.sh"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    name = str(values["deployment"])
    deployed = Deployment(name, folder, sbatch.stdout.strip().split(";")[0])
    try:
        yield deployed
    finally:
        subprocess.run(["scancel", f"--name={name}-scheduler,{name}-worker"], check=False)
        print(deployed.logs())  # shown by pytest when the test failed
        print(slurm.log_tails())


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
