"""End to end against the LSF stand-in: render, ``bsub < scheduler-job.sh``, burst, go idle.

No real LSF can be had here: ``bsub``/``bjobs``/``bkill`` are dask_deploy.testing.lsf, installed
into a folder put first on PATH, running every job as a local process group. The scheduler job
runs the scheduler and the scaler; the scaler submits worker jobs named by $LSB_JOBID.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from distributed import Client

from batch_support import (
    BatchDeployment,
    burst,
    connect,
    deployment_values,
    folder_logs,
    submitted,
    worker_names,
)
from dask_deploy.testing import lsf as standin
from process_support import wait_for

pytestmark = pytest.mark.lsf


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


class Deployment(BatchDeployment):
    def worker_jobs(self, *args: str) -> dict[str, str]:
        """Job id -> STAT of this deployment's worker jobs (``-a``: finished ones too)."""
        return {
            job["JOBID"]: job["STAT"]
            for job in bjobs(*args, "-J", self.worker_job_name)
            if job["JOB_DESCRIPTION"] == f"dask-deploy/{self.name}"
        }

    def live(self) -> dict[str, str]:
        return {job: stat for job, stat in self.worker_jobs().items() if stat in ("PEND", "RUN")}


def _bsub(folder: Path) -> str:
    with open(folder / "scheduler-job.sh") as script:
        bsub = subprocess.run(
            ["bsub"], stdin=script, cwd=folder, capture_output=True, text=True, check=True
        )
    return bsub.stdout.split("<", 1)[1].split(">", 1)[0]


def _kill_everything(deployed: BatchDeployment) -> None:
    live = [job["JOBID"] for job in bjobs("-u", "all") if job["STAT"] in ("PEND", "RUN")]
    if live:
        subprocess.run(["bkill", *live], capture_output=True)
    wait_for("every stand-in job ended", lambda: not bjobs("-u", "all"), timeout=30)


@pytest.fixture
def deployment(lsf_path: Path, tmp_path: Path) -> Iterator[Deployment]:
    scaler = {"minimum": 1, "maximum": 3, "scale_down_window": 4, "startup_timeout": 120}
    values = deployment_values(f"e2e-{uuid.uuid4().hex[:6]}", scaler)
    with submitted(
        "lsf", values, tmp_path / "rendered", submit=_bsub, clean_up=_kill_everything
    ) as deployed:
        yield Deployment(deployed.name, deployed.folder, deployed.scheduler_job)


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
        # Its worker may still be handing its results over (SIGTERM) when the replacement,
        # submitted as soon as the job was seen ending, registers.
        wait_for("the removed job's worker leaves", lambda: victim not in worker_names(client))
        client.gather(sleeps)
        assert client.gather(squares) == [x * x for x in range(60)]


def test_two_deployments_share_a_workdir_and_a_host(lsf_path: Path, tmp_path: Path) -> None:
    """Both deployments' jobs run in one folder (lsf.workdir, -cwd) on one host; each scaler runs
    beside its own rendered files ($LS_SUBCWD), each deployment has its own scheduler file there
    and its scaler's metrics a free port each (metrics_port 0)."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    names = [f"share{i}-{uuid.uuid4().hex[:4]}" for i in (1, 2)]
    # ../<deployment>-logs of the workdir (lsf.log_directory's default), made by submitted().
    log_folders = {name: tmp_path / f"{name}-logs" for name in names}

    def logs() -> str:
        return folder_logs(log_folders.values())

    with ExitStack() as stack:
        for name in names:
            scaler = {"policy": "fixed", "minimum": 1, "maximum": 1, "metrics_port": 0}
            values = deployment_values(name, scaler, lsf={"workdir": str(workdir)})
            stack.enter_context(
                submitted("lsf", values, tmp_path / name, submit=_bsub, clean_up=_kill_everything)
            )
        for name in names:
            scheduler_file = workdir / f"{name}-scheduler.json"
            wait_for(f"{scheduler_file} is written\n{logs()}", scheduler_file.exists, 90)
            with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
                wait_for(f"{name} gets its worker\n{logs()}", lambda c=client: worker_names(c), 120)
                assert client.submit(sum, [1, 2]).result(timeout=60) == 3
        ports = set()
        for name in names:
            (job_log,) = log_folders[name].glob(f"{name}-scheduler-*.log")
            (scaler_log,) = log_folders[name].glob(f"{name}-scaler-*.log")
            text = job_log.read_text(errors="replace") + scaler_log.read_text(errors="replace")
            assert "starting it again" not in text, text
            assert "Address already in use" not in text, text
            ports.update(re.findall(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", text))
        assert len(ports) == 2, logs()
