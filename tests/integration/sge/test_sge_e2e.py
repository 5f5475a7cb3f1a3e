"""End to end on a real Grid Engine: render, qsub the scheduler job, burst, go idle, tear down.

The scheduler job runs the scheduler and the scaler (`dask-deploy scale`) in one job; the scaler
submits worker jobs whose Dask workers are named by their job ids ($JOB_ID). Workers run from
the project's .venv. Grid Engine is Debian's 8.1.9, started by scripts/sge-up.sh.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client
from sge_deployment import Deployment, deployment_values, submitted, worker_names

from process_support import wait_for
from sge_support import GridEngine

pytestmark = pytest.mark.sge


def burst(client: Client, seconds: int) -> tuple[list[Any], list[Any]]:
    """One-second sleeps that keep workers busy, and squares whose results the client holds."""
    sleeps = client.map(time.sleep, [1.0] * seconds, pure=False)
    squares = client.map(pow, range(seconds), [2] * seconds)
    return sleeps, squares


def no_task_failed(futures: list[Any]) -> None:
    failed = [future for future in futures if future.status == "error"]
    assert not failed, f"task failed: {failed[0].exception()!r}"


@pytest.fixture
def deployment(
    sge: GridEngine, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Deployment]:
    """Render the sge templates, qsub the scheduler job, delete everything afterwards."""
    scaler = {"minimum": 1, "maximum": 3, "scale_down_window": 4, "startup_timeout": 120}
    scaler |= getattr(request, "param", {})
    values = deployment_values(f"e2e-{uuid.uuid4().hex[:6]}", scaler)
    with submitted(sge, values, tmp_path / "rendered") as deployed:
        yield deployed


def connect(deployment: Deployment) -> Client:
    scheduler_file = deployment.folder / "scheduler.json"
    wait_for(
        f"the scheduler job writes {scheduler_file}\n{deployment.logs()}",
        scheduler_file.exists,
        timeout=90,
    )
    return Client(scheduler_file=str(scheduler_file), timeout="30s")


def tear_down(deployment: Deployment) -> None:
    """Delete the scheduler job the way a user does; its scaler deletes the workers."""
    subprocess.run(["qdel", deployment.scheduler_job], check=True, capture_output=True)
    wait_for(
        "no job of the deployment remains in qstat",
        lambda: not deployment.all_live_jobs(),
        timeout=90,
    )


def test_burst_scales_up_by_job_id_and_idle_deletes_exactly_the_retired_jobs(
    deployment: Deployment,
) -> None:
    with connect(deployment) as client:
        wait_for("the minimum of one worker registers", lambda: len(worker_names(client)) == 1)
        sleeps, squares = burst(client, 40)
        seen: set[str] = set()

        def scaled_up() -> bool:
            no_task_failed(sleeps + squares)
            seen.update(deployment.worker_jobs())
            return len(worker_names(client)) >= 2

        wait_for("the burst brings more workers", scaled_up)
        names = worker_names(client)
        assert names <= seen, f"workers {names} are not jobs {seen}"

        client.gather(sleeps)
        assert client.gather(squares) == [x * x for x in range(40)]

        def every_live_job_is_a_worker() -> set[str]:
            live, names = set(deployment.worker_jobs()), worker_names(client)
            seen.update(live)
            assert len(live) <= 3, f"more worker jobs than the maximum: {live}"
            return names if live == names else set()

        busy_workers = wait_for("every live worker job has registered", every_live_job_is_a_worker)
        submitted_before_idle = set(seen)

        # Idle: the scaler retires workers down to the minimum and deletes exactly their jobs.
        def down_to_minimum() -> bool:
            seen.update(deployment.worker_jobs())
            return len(worker_names(client)) == 1

        wait_for("the workers go down to the minimum", down_to_minimum)
        remaining = worker_names(client)
        assert remaining <= busy_workers

        def only_the_remaining_job_is_live() -> bool:
            live = set(deployment.worker_jobs())
            seen.update(live)
            return live == remaining

        wait_for("only the remaining worker's job is live", only_the_remaining_job_is_live)
        assert seen == submitted_before_idle, "a job was submitted while going idle"

        # The results the client holds survived the retirement of the workers that computed them.
        assert client.gather(squares) == [x * x for x in range(40)]

    tear_down(deployment)


def test_worker_job_deleted_from_outside_is_replaced(deployment: Deployment) -> None:
    with connect(deployment) as client:
        sleeps, squares = burst(client, 60)

        def three_workers() -> bool:
            no_task_failed(sleeps + squares)
            return len(worker_names(client)) == 3

        wait_for("the burst brings three workers", three_workers)
        before = deployment.worker_jobs()
        victim = sorted(worker_names(client))[0]
        subprocess.run(["qdel", victim], check=True, capture_output=True)

        def replaced() -> set[str]:
            return set(deployment.worker_jobs()) - set(before)

        new_jobs = wait_for("the scaler submits a replacement job", replaced)
        wait_for(
            "the replacement registers as a worker named by its job id",
            lambda: worker_names(client) & new_jobs,
        )
        assert victim not in worker_names(client)
        client.gather(sleeps)
        assert client.gather(squares) == [x * x for x in range(60)]

    tear_down(deployment)


@pytest.mark.parametrize("deployment", [{"minimum": 2}], indirect=True)
def test_workers_end_their_jobs_when_the_scheduler_job_is_killed(deployment: Deployment) -> None:
    with connect(deployment) as client:
        wait_for("two workers register", lambda: len(worker_names(client)) == 2)
        workers = worker_names(client)
    # Scheduler and scaler die at once, with no chance to clean up (SIGKILL to the whole job).
    deployment.kill_scheduler_job()
    wait_for(
        "the workers exit on their own (lost scheduler, death timeout) and their jobs end",
        lambda: not set(deployment.worker_jobs()) & workers,
        timeout=120,
    )
    wait_for("the killed scheduler job ends", lambda: not deployment.all_live_jobs(), timeout=60)
