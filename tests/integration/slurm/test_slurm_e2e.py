"""End to end on a real SLURM: render, sbatch the scheduler job, burst, go idle, tear down.

The scheduler job runs the scheduler and the scaler (`dask-deploy scale`) in one allocation;
the scaler submits worker jobs whose Dask workers are named by their job ids. Workers run from
the project's .venv. Timings are short through the values (interval, scale_down_window).
"""

from __future__ import annotations

import os
import signal
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

from process_support import wait_for

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[3]
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


def burst(client: Client, seconds: int) -> tuple[list[Any], list[Any]]:
    """One-second sleeps that keep workers busy, and squares whose results the client holds.

    Only stdlib functions: the scheduler and the workers cannot import this test module.
    """
    sleeps = client.map(time.sleep, [1.0] * seconds, pure=False)
    squares = client.map(pow, range(seconds), [2] * seconds)
    return sleeps, squares


def no_task_failed(futures: list[Any]) -> None:
    failed = [future for future in futures if future.status == "error"]
    assert not failed, f"task failed: {failed[0].exception()!r}"


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


@pytest.fixture
def deployment(slurm: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """Render the slurm templates, sbatch the scheduler job, cancel everything afterwards.

    Indirect parametrization may override ``scaler`` values.
    """
    scaler_overrides: dict[str, Any] = getattr(request, "param", {})
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    folder = tmp_path / "rendered"
    render(
        {
            "deployment": name,
            "python": {"venv": str(VENV)},
            "scheduler": {"host": "127.0.0.1", "dashboard_port": None, "memory_mib": 512},
            "worker": {
                "host": "127.0.0.1",
                "threads": 1,
                "memory_mib": 512,
                "walltime_minutes": 10,
                "lifetime_margin": 60,
                "lifetime_stagger": 0,
                "death_timeout": 20,
            },
            "scaler": {
                "minimum": 1,
                "maximum": 3,
                "interval": 0.5,
                "scale_down_window": 4,
                "startup_timeout": 120,
                "metrics_port": None,
                "cleanup_on_exit": True,
                **scaler_overrides,
            },
        },
        folder,
    )
    submitted = subprocess.run(
        ["sbatch", "--parsable", "scheduler-job.sh"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    deployed = Deployment(name, folder, submitted.stdout.strip().split(";")[0])
    try:
        yield deployed
    finally:
        subprocess.run(["scancel", f"--name={name}-scheduler,{name}-worker"], check=False)
        print(deployed.logs())  # shown by pytest when the test failed
        print(slurm.log_tails())


def connect(deployment: Deployment) -> Client:
    scheduler_file = deployment.folder / "scheduler.json"
    wait_for(
        f"the scheduler job writes {scheduler_file}\n{deployment.logs()}",
        scheduler_file.exists,
        timeout=60,
    )
    return Client(scheduler_file=str(scheduler_file), timeout="30s")


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
        assert victim not in worker_names(client)
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
        assert len(deployment.worker_jobs()) == 2, deployment.worker_jobs()
        assert future.result() == 6, "the scheduler kept the client's result"
        assert scaler_pids(deployment) == restarted
    assert "the scaler exited with status 137; starting it again" in deployment.logs()
    tear_down(deployment)
