"""A rendered Grid Engine deployment, submitted with qsub as a user does, for the e2e tests.

``submitted(...)`` renders the sge templates with ``deployment_values(...)``, runs
``qsub scheduler-job.sh`` in the rendered folder and, whatever the test did, deletes every job
of the deployment and prints the job logs and Grid Engine's messages (pytest shows them on
failure).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from distributed import Client

from sge_support import GridEngine

VENV = Path(sys.executable).parent.parent


def qstat_jobs() -> list[tuple[str, str, str]]:
    """``(job id, job name, state)`` of every job of this user that qstat lists."""
    output = subprocess.run(["qstat", "-xml"], capture_output=True, text=True, check=True).stdout
    return [
        (job.findtext("JB_job_number", ""), job.findtext("JB_name", ""), job.findtext("state", ""))
        for job in ElementTree.fromstring(output).iter("job_list")
    ]


@dataclass
class Deployment:
    name: str
    folder: Path
    scheduler_job: str

    @property
    def worker_job_name(self) -> str:
        return f"{self.name}-worker"

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

    def logs(self) -> str:
        return "\n".join(
            f"----- {log.name}\n{log.read_text(errors='replace')[-4000:]}"
            for log in sorted(self.folder.glob("*.log"))
        )


def worker_names(client: Client) -> set[str]:
    # `dask worker` turns a numeric --name into an int: compare as text, like the scheduler does.
    return {str(w["name"]) for w in client.scheduler_info()["workers"].values()}


def deployment_values(name: str, scaler: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """Values for a deployment on 127.0.0.1 running this venv, with short scaler timings."""
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
        **sections,
    }


def render(values: dict[str, Any], out: Path) -> None:
    values_file = out.parent / f"{out.name}-values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    command = [str(VENV / "bin" / "dask-deploy"), "render", "--backend", "sge"]
    rendered = subprocess.run(
        [*command, "--values", str(values_file), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert rendered.returncode == 0, rendered.stderr


@contextmanager
def submitted(sge: GridEngine, values: dict[str, Any], folder: Path) -> Iterator[Deployment]:
    """Render ``values`` into ``folder``, qsub the scheduler job, delete everything after."""
    render(values, folder)
    qsub = subprocess.run(
        ["qsub", "-terse", "scheduler-job.sh"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    name = str(values["deployment"])
    deployed = Deployment(name, folder, qsub.stdout.strip())
    try:
        yield deployed
    finally:
        left = [job for job, _, _ in deployed.all_live_jobs()]
        if left:
            subprocess.run(["qdel", "-f", *left], check=False, capture_output=True)
        print(deployed.logs())  # shown by pytest when the test failed
        print(sge.log_tails())
