"""End to end on a real SLURM: render, sbatch the scheduler job, burst, go idle, tear down.

The scheduler job runs the scheduler and the scaler (`dask-deploy scale`) in one allocation;
the scaler submits worker jobs whose Dask workers are named by their job ids. Workers run from
the project's .venv. Timings are short through the values (interval, scale_down_window).
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from slurm_deployment import Deployment, deployment_values, submitted, worker_names

from batch_support import burst, connect, render
from process_support import wait_for
from slurm_support import Slurm

pytestmark = pytest.mark.slurm


def no_task_failed(futures: list[Any]) -> None:
    failed = [future for future in futures if future.status == "error"]
    assert not failed, f"task failed: {failed[0].exception()!r}"


@pytest.fixture
def deployment(
    slurm: Slurm, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Deployment]:
    """Render the slurm templates, sbatch the scheduler job, cancel everything afterwards.

    Indirect parametrization may override ``scaler`` values.
    """
    scaler = {"minimum": 1, "maximum": 3, "scale_down_window": 4, "startup_timeout": 120}
    scaler |= getattr(request, "param", {})
    values = deployment_values(f"e2e-{uuid.uuid4().hex[:6]}", scaler)
    with submitted(slurm, values, tmp_path / "rendered") as deployed:
        yield deployed


def tear_down(deployment: Deployment) -> None:
    """Cancel the scheduler job the way a user does; its scaler cancels the workers."""
    subprocess.run(["scancel", deployment.scheduler_job], check=True)
    wait_for(
        "no job of the deployment remains in squeue",
        lambda: not deployment.all_live_jobs(),
        timeout=60,
    )


def test_burst_scales_up_by_job_id_and_idle_cancels_exactly_the_retired_jobs(
    deployment: Deployment,
) -> None:
    with connect(deployment) as client:
        wait_for("the minimum of one worker registers", lambda: len(worker_names(client)) == 1)
        sleeps, squares = burst(client, 40)

        def scaled_up() -> bool:
            no_task_failed(sleeps + squares)
            return len(worker_names(client)) >= 2

        wait_for("the burst brings more workers", scaled_up)
        during_burst = deployment.worker_jobs()
        names = worker_names(client)
        assert names <= set(during_burst), f"workers {names} are not jobs {during_burst}"
        assert len(during_burst) <= 3

        client.gather(sleeps)
        assert client.gather(squares) == [x * x for x in range(40)]
        ever_submitted = set(deployment.worker_jobs("all"))

        def every_live_job_is_a_worker() -> set[str]:
            live, names = set(deployment.worker_jobs()), worker_names(client)
            return names if live == names else set()

        busy_workers = wait_for("every live worker job has registered", every_live_job_is_a_worker)

        # Idle: the scaler retires workers down to the minimum and cancels exactly their jobs.
        wait_for("the workers go down to the minimum", lambda: len(worker_names(client)) == 1)
        remaining = worker_names(client)
        assert remaining <= busy_workers
        wait_for(
            "only the remaining worker's job is live",
            lambda: set(deployment.worker_jobs()) == remaining,
        )
        retired = busy_workers - remaining
        ended = deployment.worker_jobs("all")
        assert {job: ended[job] for job in retired} == {
            job: ended[job] for job in retired if ended[job] in ("COMPLETED", "CANCELLED")
        }
        assert set(ended) == ever_submitted  # nothing was submitted while going idle

        # The results the client holds survived the retirement of the workers that computed them.
        assert client.gather(squares) == [x * x for x in range(40)]

    tear_down(deployment)


def test_worker_job_cancelled_from_outside_is_replaced(deployment: Deployment) -> None:
    with connect(deployment) as client:
        sleeps, squares = burst(client, 60)

        def three_workers() -> bool:
            no_task_failed(sleeps + squares)
            return len(worker_names(client)) == 3

        wait_for("the burst brings three workers", three_workers)
        before = deployment.worker_jobs()
        victim = sorted(worker_names(client))[0]
        subprocess.run(["scancel", victim], check=True)

        def replaced() -> set[str]:
            return set(deployment.worker_jobs()) - set(before)

        new_jobs = wait_for("the scaler submits a replacement job", replaced)
        wait_for(
            "the replacement registers as a worker named by its job id",
            lambda: worker_names(client) & new_jobs,
        )
        # Its worker may still be handing its results over (SIGTERM) when the replacement,
        # submitted as soon as the job was seen ending, registers.
        wait_for("the removed job's worker leaves", lambda: victim not in worker_names(client))
        client.gather(sleeps)
        assert client.gather(squares) == [x * x for x in range(60)]

    tear_down(deployment)


@pytest.mark.parametrize("deployment", [{"cleanup_on_exit": False, "minimum": 2}], indirect=True)
def test_workers_end_their_jobs_when_the_scheduler_dies(deployment: Deployment) -> None:
    with connect(deployment) as client:
        wait_for("two workers register", lambda: len(worker_names(client)) == 2)
        workers = worker_names(client)
    # Scheduler and scaler die together; the scaler cleans nothing up (cleanup_on_exit: false).
    subprocess.run(["scancel", "--signal=KILL", deployment.scheduler_job], check=True)
    wait_for(
        "the workers exit on their own (lost scheduler, death timeout) and their jobs end",
        lambda: not set(deployment.worker_jobs()) & workers,
        timeout=120,
    )
    ended = deployment.worker_jobs("all")
    assert all(ended[job] != "CANCELLED" for job in workers), ended  # nobody cancelled them


def scaler_pids(deployment: Deployment) -> set[int]:
    """The `dask-deploy scale` processes running in this deployment's rendered folder."""
    pids = set()
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
            in_folder = (proc / "cwd").resolve() == deployment.folder.resolve()
        except OSError:
            continue
        if in_folder and b"dask_deploy.cli" in command and b"scale" in command:
            pids.add(int(proc.name))
    return pids


@pytest.mark.parametrize("deployment", [{"minimum": 2}], indirect=True)
def test_a_scaler_that_dies_in_the_scheduler_job_is_started_again(
    deployment: Deployment,
) -> None:
    with connect(deployment) as client:
        wait_for("two workers register", lambda: len(worker_names(client)) == 2)
        future = client.submit(sum, [1, 2, 3])
        assert future.result() == 6
        (killed,) = wait_for("the scaler runs", lambda: scaler_pids(deployment))
        os.kill(killed, signal.SIGKILL)

        restarted = wait_for(
            "the scheduler job starts a new scaler",
            lambda: scaler_pids(deployment) - {killed},
            timeout=60,
        )
        assert deployment.all_live_jobs(), "the scheduler job ended with its scaler"
        # The new scaler works: a worker job cancelled from outside is replaced, no more.
        before = set(deployment.worker_jobs())
        victim = sorted(worker_names(client))[0]
        subprocess.run(["scancel", victim], check=True)
        new_jobs = wait_for(
            "the restarted scaler replaces the cancelled worker",
            lambda: set(deployment.worker_jobs()) - before,
        )
        wait_for("the replacement registers", lambda: worker_names(client) & new_jobs)
        # A cancelled job stays COMPLETING (a live state) while its worker hands over.
        wait_for("the cancelled job ends", lambda: victim not in deployment.worker_jobs())
        assert len(deployment.worker_jobs()) == 2, deployment.worker_jobs()
        assert future.result() == 6, "the scheduler kept the client's result"
        assert scaler_pids(deployment) == restarted
    assert "the scaler exited with status 137; starting it again" in deployment.all_logs()
    tear_down(deployment)


@pytest.mark.parametrize("deployment", [{"minimum": 1, "maximum": 1}], indirect=True)
def test_jobs_log_into_the_log_folder_and_rendering_again_after_a_run_works(
    deployment: Deployment,
) -> None:
    with connect(deployment) as client:
        wait_for("the worker registers", lambda: worker_names(client))
        (worker,) = worker_names(client)
    tear_down(deployment)
    logs = {log.name for log in deployment.log_folder.iterdir()}
    job = deployment.scheduler_job
    name = deployment.name
    assert {f"{name}-scheduler-{job}.log", f"{name}-scaler-{job}.log"} <= logs, logs
    assert f"{name}-worker-{worker}.log" in logs, logs
    scaler_log = (deployment.log_folder / f"{name}-scaler-{job}.log").read_text()
    assert "scale up" in scaler_log.lower() or worker in scaler_log, scaler_log
    # The rendered folder holds what render wrote and nothing of the run: render into it again.
    values = deployment_values(name, {"minimum": 2, "maximum": 2})
    render("slurm", values, deployment.folder)
    assert "minimum: 2" in (deployment.folder / "scaler-config.yaml").read_text()
