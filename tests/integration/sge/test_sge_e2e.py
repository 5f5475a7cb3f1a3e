"""End to end on a real Grid Engine: render, qsub the scheduler job, burst, go idle, tear down.

The scheduler job runs the scheduler and the scaler (`dask-deploy scale`) in one job; the scaler
submits worker jobs whose Dask workers are named by their job ids ($JOB_ID). Workers run from
the project's .venv. Grid Engine is Debian's 8.1.9, started by scripts/sge-up.sh.
"""

from __future__ import annotations

import json
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client
from sge_deployment import Deployment, deployment_values, submitted, worker_names

from batch_support import burst, connect
from process_support import wait_for
from sge_support import GridEngine
from tls_support import Certificates, assert_only_certified_clients_get_in, client_security

pytestmark = pytest.mark.sge


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
        # Its worker may still be handing its results over (SIGTERM) when the replacement,
        # submitted as soon as the job was seen ending, registers.
        wait_for("the removed job's worker leaves", lambda: victim not in worker_names(client))
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


def test_tls_is_on_by_default_and_a_client_without_the_certificate_is_refused(
    sge: GridEngine, tmp_path: Path
) -> None:
    """The default values: the scheduler job generates the deployment's certificates into a
    0700 folder; the scaler and the workers use them; a client without them never gets in."""
    scaler = {"minimum": 1, "maximum": 1, "startup_timeout": 120}
    values = deployment_values(f"tlsgen-{uuid.uuid4().hex[:6]}", scaler)
    del values["tls"]  # the templates' default: TLS with generated certificates
    with submitted(sge, values, tmp_path / "rendered") as deployment:
        wait_for(
            f"the scheduler job writes its scheduler file\n{deployment.logs()}",
            lambda: (
                deployment.scheduler_file.exists() and deployment.scheduler_file.stat().st_size > 0
            ),
            timeout=90,
        )
        address = json.loads(deployment.scheduler_file.read_text())["address"]
        assert address.startswith("tls://"), address
        folder = deployment.folder.parent / f"{deployment.name}-tls"
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        files = Certificates(folder / "ca.pem", folder / "tls.crt", folder / "tls.key")
        assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
        with Client(address, security=client_security(files), timeout="30s") as client:
            wait_for(f"the worker registers\n{deployment.logs()}", lambda: worker_names(client))
            assert client.submit(sum, [1, 2, 3]).result() == 6
        assert_only_certified_clients_get_in(address, files, tmp_path)
        tear_down(deployment)
