"""The SLURM backend's commands against the real SLURM: submit, list, cancel exactly one job,
and only ever the jobs of the user it runs as."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dask_deploy.backends import BackendContext, InstanceState
from dask_deploy.backends import slurm as dialect
from dask_deploy.backends.batch import BatchBackend, Command, Runner, load_settings, run_command

pytestmark = pytest.mark.slurm


async def wait_for_states(
    backend: BatchBackend, want: dict[str, InstanceState], timeout: float = 60
) -> None:
    seen: dict[str, InstanceState] = {}
    for _ in range(int(timeout / 0.5)):
        seen = {i.name: i.state for i in await backend.instances()}
        if all(seen.get(name) is state for name, state in want.items()):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"wanted {want}, squeue shows {seen}")


async def test_backend_submits_lists_and_cancels_exactly_the_named_job(
    slurm: Any, tmp_path: Path
) -> None:
    script = tmp_path / "worker-job.sh"
    # A time limit, as every worker job has: without one a running job's end is "NONE" when the
    # main scheduler started it (backfill would write start + 365 days).
    script.write_text(
        f"#!/bin/bash\n#SBATCH --time=10\n#SBATCH --output={tmp_path}/%j.out\nexec sleep 300\n"
    )
    deployment = f"live-{uuid.uuid4().hex[:8]}"  # earlier runs' jobs stay listed for MinJobAge
    context = BackendContext(deployment, "tcp://127.0.0.1:8786", {"worker_script": str(script)})
    backend = BatchBackend(dialect, load_settings(context))
    # A job of another deployment that the backend must never see nor touch.
    stranger = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--job-name={deployment}-worker",
            f"--output={tmp_path}/x.out",
            "--wrap=sleep 300",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        await backend.scale_up(2)
        names = sorted(i.name for i in await backend.instances())
        assert len(names) == 2 and stranger not in names
        await wait_for_states(backend, dict.fromkeys(names, InstanceState.RUNNING))
        jobs = await backend.jobs()
        assert all(job.ends_at is not None for job in jobs), jobs

        await backend.scale_up(2)  # already there: submits nothing
        assert len(await backend.instances()) == 2

        await backend.scale_down([names[0], stranger])
        await wait_for_states(
            backend, {names[0]: InstanceState.EXITED, names[1]: InstanceState.RUNNING}
        )
        stranger_state = subprocess.run(
            ["squeue", "--noheader", "--states=all", f"--jobs={stranger}", "--format=%T"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert stranger_state == "RUNNING"
    finally:
        ids = [i.name for i in await backend.instances()] + [stranger]
        subprocess.run(["scancel", *ids], check=False)


async def test_job_near_its_walltime_gets_a_replacement_while_it_still_runs(
    slurm: Any, tmp_path: Path
) -> None:
    # A one-minute time limit is always within a 120 s lead: the job is "leaving" once it runs.
    script = tmp_path / "worker-job.sh"
    script.write_text(
        f"#!/bin/bash\n#SBATCH --time=1\n#SBATCH --output={tmp_path}/%j.out\nexec sleep 300\n"
    )
    deployment = f"wall-{uuid.uuid4().hex[:8]}"
    options = {"worker_script": str(script), "replace_before_end": 120}
    context = BackendContext(deployment, "tcp://127.0.0.1:8786", options)
    backend = BatchBackend(dialect, load_settings(context))
    try:
        await backend.scale_up(1)
        [first] = [i.name for i in await backend.instances()]
        await wait_for_states(backend, {first: InstanceState.EXITED})
        assert [j.instance.state for j in await backend.jobs()] == [InstanceState.RUNNING]

        await backend.scale_up(1)  # the loop's request: one worker, the leaving one counts as gone
        jobs = {j.instance.name: j.instance.state for j in await backend.jobs()}
        assert len(jobs) == 2 and jobs[first] is InstanceState.RUNNING

        await backend.scale_down([first])  # cleanup still reaches the leaving job
        for _ in range(60):
            states = {j.instance.name: j.instance.state for j in await backend.jobs()}
            if states[first] is InstanceState.EXITED:
                break
            await asyncio.sleep(0.5)
        assert states[first] is InstanceState.EXITED
        assert len(states) == 2 and InstanceState.EXITED not in {
            state for name, state in states.items() if name != first
        }
    finally:
        subprocess.run(["scancel", *[i.name for i in await backend.instances()]], check=False)


def running_as(user: str) -> Runner:
    """A runner that executes every command as ``user``, as that user's own scaler would."""

    async def run(command: Command, timeout: float) -> str:
        as_user = replace(command, argv=("runuser", "-u", user, "--", *command.argv))
        return await run_command(as_user, timeout)

    return run


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder both users' jobs can read scripts from and write logs to."""
    folder = Path(tempfile.mkdtemp(prefix="dask-deploy-two-users-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def job_owners(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """Job id -> (user, state), as squeue shows them to root."""
    output = subprocess.run(
        [
            "squeue",
            "--noheader",
            "--states=all",
            f"--jobs={','.join(job_ids)}",
            "--format=%i|%u|%T",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {i: (u, t) for i, u, t in (line.split("|") for line in output.splitlines())}


async def test_two_users_with_the_same_deployment_name_never_see_nor_cancel_each_others_jobs(
    slurm: Any, other_user: str, shared_folder: Path
) -> None:
    script = shared_folder / "worker-job.sh"
    script.write_text(
        "#!/bin/bash\n#SBATCH --time=10\n"
        f"#SBATCH --chdir={shared_folder}\n#SBATCH --output={shared_folder}/%j.out\n"
        "exec sleep 300\n"
    )
    script.chmod(0o755)
    deployment = f"shared-{uuid.uuid4().hex[:8]}"  # both users keep the same name
    options = {"worker_script": str(script), "status_interval": 0}
    settings = load_settings(BackendContext(deployment, "tcp://127.0.0.1:8786", options))
    # This process runs as root, whom SLURM lets list and cancel anybody's jobs: only the
    # backend's own scoping keeps it off the other user's deployment.
    assert os.geteuid() == 0 and settings.user == "root"
    mine = BatchBackend(dialect, settings)
    theirs = BatchBackend(
        dialect, replace(settings, user=other_user), runner=running_as(other_user)
    )
    try:
        await mine.scale_up(2)
        await theirs.scale_up(1)
        my_jobs = sorted(i.name for i in await mine.instances())
        their_jobs = sorted(i.name for i in await theirs.instances())
        assert len(my_jobs) == 2 and len(their_jobs) == 1
        owners = job_owners(my_jobs + their_jobs)
        assert {owners[j][0] for j in my_jobs} == {"root"}
        assert owners[their_jobs[0]][0] == other_user

        await mine.scale_up(2)  # the other user's job does not count as one of mine...
        await theirs.scale_up(1)  # ...nor mine as theirs
        assert len(await mine.instances()) == 2 and len(await theirs.instances()) == 1

        await mine.scale_down(their_jobs)  # root could; the backend must not
        await theirs.scale_down(my_jobs)
        # Even a cancel command naming the other user's job id leaves it alone.
        await run_command(dialect.cancel_command(mine.settings, their_jobs), 30)
        await wait_for_states(mine, dict.fromkeys(my_jobs, InstanceState.RUNNING))
        await wait_for_states(theirs, dict.fromkeys(their_jobs, InstanceState.RUNNING))
        assert {state for _, state in job_owners(my_jobs + their_jobs).values()} == {"RUNNING"}

        await mine.scale_down(my_jobs[:1])  # and each still removes its own
        await theirs.scale_down(their_jobs)
        await wait_for_states(mine, {my_jobs[0]: InstanceState.EXITED})
        await wait_for_states(theirs, {their_jobs[0]: InstanceState.EXITED})
        assert job_owners(my_jobs[1:])[my_jobs[1]][1] == "RUNNING"
    finally:
        subprocess.run(["scancel", f"--name={deployment}-worker"], check=False)
