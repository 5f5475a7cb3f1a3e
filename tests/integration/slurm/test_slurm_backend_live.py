"""The SLURM backend's commands against the real SLURM: submit, list, cancel exactly one job."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from dask_deploy.backends import BackendContext, InstanceState
from dask_deploy.backends.slurm import SlurmBackend, load_settings

pytestmark = pytest.mark.slurm


async def wait_for_states(
    backend: SlurmBackend, want: dict[str, InstanceState], timeout: float = 60
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
    backend = SlurmBackend(load_settings(context))
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
    backend = SlurmBackend(
        load_settings(BackendContext(deployment, "tcp://127.0.0.1:8786", options))
    )
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
