"""End to end against the LSF stand-in: render, ``bsub < scheduler-job.sh``, burst, go idle.

No real LSF can be had here: ``bsub``/``bjobs``/``bkill`` are dask_deploy.testing.lsf, installed
into a folder put first on PATH, running every job as a local process group. The scheduler job
runs the scheduler and the scaler; the scaler submits worker jobs named by $LSB_JOBID.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from distributed import Client

from dask_deploy.testing import lsf as standin
from process_support import wait_for

pytestmark = pytest.mark.lsf

VENV = Path(sys.executable).parent.parent


@pytest.fixture
def lsf_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in's commands first on PATH, its state in tmp_path/lsf-state."""
    state = tmp_path / "lsf-state"
    folder = standin.install(tmp_path / "lsf-bin", state, terminate_interval=5.0)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(standin.STATE_ENV, str(state))
    return state


def bjobs(*args: str) -> list[dict[str, str]]:
    fields = "jobid job_name job_description stat exit_reason"
    output = subprocess.run(
        ["bjobs", *args, "-o", fields, "-json"], capture_output=True, text=True, check=True
    ).stdout
    records: list[dict[str, str]] = json.loads(output)["RECORDS"]
    return records


@dataclass
class Deployment:
    name: str
    folder: Path
    scheduler_job: str

    def worker_jobs(self, *args: str) -> dict[str, str]:
        """Job id -> STAT of this deployment's worker jobs (``-a``: finished ones too)."""
        return {
            job["JOBID"]: job["STAT"]
            for job in bjobs(*args, "-J", f"{self.name}-worker")
            if job["JOB_DESCRIPTION"] == f"dask-deploy/{self.name}"
        }

    def live(self) -> dict[str, str]:
        return {job: stat for job, stat in self.worker_jobs().items() if stat in ("PEND", "RUN")}

    def logs(self) -> str:
        return "\n".join(
            f"----- {log.name}\n{log.read_text(errors='replace')[-4000:]}"
            for log in sorted(self.folder.glob("*.log"))
        )


def worker_names(client: Client) -> set[str]:
    return {str(w["name"]) for w in client.scheduler_info()["workers"].values()}


@pytest.fixture
def deployment(lsf_path: Path, tmp_path: Path) -> Iterator[Deployment]:
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    values: dict[str, Any] = {
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
        "scaler": {
            "interval": 0.5,
            "metrics_port": None,
            "minimum": 1,
            "maximum": 3,
            "scale_down_window": 4,
            "startup_timeout": 120,
        },
    }
    folder = tmp_path / "rendered"
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    render = [str(VENV / "bin" / "dask-deploy"), "render", "--backend", "lsf"]
    rendered = subprocess.run(
        [*render, "--values", str(values_file), "--out", str(folder)],
        capture_output=True,
        text=True,
    )
    assert rendered.returncode == 0, rendered.stderr
    with open(folder / "scheduler-job.sh") as script:
        submitted = subprocess.run(
            ["bsub"], stdin=script, cwd=folder, capture_output=True, text=True, check=True
        )
    job_id = submitted.stdout.split("<", 1)[1].split(">", 1)[0]
    deployed = Deployment(name, folder, job_id)
    try:
        yield deployed
    finally:
        live = [job["JOBID"] for job in bjobs("-u", "all") if job["STAT"] in ("PEND", "RUN")]
        if live:
            subprocess.run(["bkill", *live], capture_output=True)
        wait_for("every stand-in job ended", lambda: not bjobs("-u", "all"), timeout=30)
        print(deployed.logs())


def connect(deployment: Deployment) -> Client:
    scheduler_file = deployment.folder / "scheduler.json"
    wait_for(f"the scheduler writes {scheduler_file}", scheduler_file.exists, timeout=60)
    return Client(scheduler_file=str(scheduler_file), timeout="30s")


def burst(client: Client, seconds: int) -> tuple[list[Any], list[Any]]:
    sleeps = client.map(time.sleep, [1.0] * seconds, pure=False)
    squares = client.map(pow, range(seconds), [2] * seconds)
    return sleeps, squares


def test_burst_scales_up_and_idle_kills_exactly_the_retired_jobs(deployment: Deployment) -> None:
    with connect(deployment) as client:
        wait_for("the minimum of one worker registers", lambda: len(worker_names(client)) == 1)
        sleeps, squares = burst(client, 40)
        wait_for("the burst brings more workers", lambda: len(worker_names(client)) >= 2)
        assert worker_names(client) <= set(deployment.live())
        client.gather(sleeps)
        assert client.gather(squares) == [x * x for x in range(40)]

        def every_live_job_is_a_worker() -> set[str]:
            live, names = set(deployment.live()), worker_names(client)
            assert len(live) <= 3, f"more worker jobs than the maximum: {live}"
            return names if live == names else set()

        busy = wait_for("every live worker job has registered", every_live_job_is_a_worker)
        ever = set(deployment.worker_jobs("-a"))
        wait_for("the workers go down to the minimum", lambda: len(worker_names(client)) == 1)
        remaining = worker_names(client)
        wait_for("only the remaining job is live", lambda: set(deployment.live()) == remaining)
        ended = deployment.worker_jobs("-a")
        assert set(ended) == ever, "nothing was submitted while going idle"
        assert all(ended[job] in ("DONE", "EXIT") for job in busy - remaining), ended
        assert client.gather(squares) == [x * x for x in range(40)]
    subprocess.run(["bkill", deployment.scheduler_job], check=True, capture_output=True)
    wait_for("the scaler kills its workers on the way out", lambda: not deployment.live())


def test_worker_job_killed_from_outside_is_replaced(deployment: Deployment) -> None:
    with connect(deployment) as client:
        sleeps, squares = burst(client, 60)
        wait_for("the burst brings three workers", lambda: len(worker_names(client)) == 3)
        before = set(deployment.worker_jobs("-a"))
        victim = sorted(worker_names(client))[0]
        subprocess.run(["bkill", victim], check=True, capture_output=True)
        new_jobs = wait_for(
            "the scaler submits a replacement", lambda: set(deployment.live()) - before
        )
        assert all(int(job) > int(victim) for job in new_jobs), "job ids only increase"
        wait_for("the replacement registers", lambda: worker_names(client) & new_jobs)
        assert victim not in worker_names(client)
        client.gather(sleeps)
        assert client.gather(squares) == [x * x for x in range(60)]
