"""SLURM: each worker is one batch job, named by its job id.

Options (``backend.options`` in the scaler configuration)::

    worker_script: /path/to/worker-job.sh   # required: the sbatch script that starts one worker
    job_name: dask-worker                   # optional, default "<deployment>-worker"
    submit_args: []                         # optional: extra sbatch arguments, e.g. ["--qos=high"]
    replace_before_end: 0                   # optional: seconds; see "Walltime" below
    command_timeout: 30                     # optional: seconds; see "Timeouts" below

Every job gets ``--job-name`` and ``--comment dask-deploy/<deployment>``; listing and cancelling
filter on both, so the backend never touches another deployment's jobs. The worker script starts
``dask worker --name $SLURM_JOB_ID``, so ``Instance.name`` is the job id the scheduler knows.

Walltime: a worker job ends at its time limit, and its worker retires itself a little before
(``--lifetime``). A running job within ``replace_before_end`` seconds of its end is reported as
EXITED: its worker is on its way out, so the loop counts it as gone and requests its replacement
now, while it still works, and never picks it for scale-down. ``scale_down`` and cleanup still
cancel it, because they look at SLURM's own state.

Timeouts: an sbatch, squeue or scancel that has not finished after ``command_timeout`` seconds
(default 30: above SLURM's own MessageTimeout, default 10 s, and its connect retries) is killed
and the call fails, so a hung or stopped slurmctld holds one tick instead of the scaler. An sbatch
killed that way may still have been accepted; its job is then listed on the next tick and
counted, because every job carries the deployment's name and comment.

The commands are built by pure functions and their output parsed by pure functions; ``_run``
is the one place that executes them. ``SLURM_CONF`` and the rest of the environment pass through.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from .._errors import SettingsError
from ..contract import Backend, BackendContext, Instance, InstanceState, count_requested
from ..options import BACKEND_OPTIONS, reject_unknown

#: squeue's long state names; anything not listed counts as running, so a state added by a
#: later SLURM holds its job instead of starting a duplicate. A job that is ending (COMPLETING,
#: STAGE_OUT) is gone like a terminating pod: its processes have exited or are being killed, so
#: the loop replaces it at once instead of waiting for SLURM's cleanup.
PENDING_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"})
EXITED_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "COMPLETING",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "STAGE_OUT",
        "TIMEOUT",
    }
)
# Job id, state, submit time, expected end, comment; the comment may contain anything, so last.
SQUEUE_FORMAT = "%i|%T|%V|%e|%k"
_JOB_ID = re.compile(r"^\d+$")
#: Seconds an sbatch, squeue or scancel may take before it is killed (``command_timeout``).
DEFAULT_COMMAND_TIMEOUT = 30.0


@dataclass(frozen=True)
class Command:
    """One command line and the environment variables it needs beyond the current ones."""

    argv: tuple[str, ...]
    env: Mapping[str, str]


@dataclass(frozen=True)
class SlurmJob:
    """One line of squeue: a worker job with the times SLURM reports for it."""

    instance: Instance
    ends_at: float | None
    """When SLURM will end the job (start + time limit); None while it has not started."""


@dataclass(frozen=True)
class SlurmSettings:
    """The backend's options, validated once."""

    deployment: str
    worker_script: Path
    job_name: str
    submit_args: tuple[str, ...]
    replace_before_end: float = 0.0
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT

    @property
    def comment(self) -> str:
        return f"dask-deploy/{self.deployment}"


class SlurmCommandError(RuntimeError):
    """An sbatch, squeue or scancel call failed; the message carries its stderr."""


def load_settings(context: BackendContext) -> SlurmSettings:
    """Validate ``backend.options``; raise :class:`SettingsError` naming the bad key."""
    options = dict(context.options)
    allowed = {"worker_script", "job_name", "submit_args", "replace_before_end", "command_timeout"}
    reject_unknown(options, allowed, prefix=BACKEND_OPTIONS)
    script = options.get("worker_script")
    if not isinstance(script, str) or not Path(script).is_file():
        raise SettingsError("backend.options.worker_script", script, "the path of an sbatch script")
    job_name = options.get("job_name", f"{context.deployment}-worker")
    if not isinstance(job_name, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", job_name):
        raise SettingsError("backend.options.job_name", job_name, "1-64 of [A-Za-z0-9._-]")
    submit_args = options.get("submit_args", [])
    if not isinstance(submit_args, list) or not all(isinstance(a, str) for a in submit_args):
        raise SettingsError("backend.options.submit_args", submit_args, "a list of strings")
    lead = options.get("replace_before_end", 0)
    if isinstance(lead, bool) or not isinstance(lead, int | float) or lead < 0:
        raise SettingsError("backend.options.replace_before_end", lead, "a number of seconds >= 0")
    timeout = options.get("command_timeout", DEFAULT_COMMAND_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise SettingsError("backend.options.command_timeout", timeout, "a number of seconds > 0")
    return SlurmSettings(
        context.deployment,
        Path(script),
        job_name,
        tuple(submit_args),
        float(lead),
        float(timeout),
    )


def submit_command(settings: SlurmSettings) -> Command:
    """``sbatch`` for one worker job, printing only its id.

    >>> submit_command(SlurmSettings("dask", Path("w.sh"), "dask-worker", ())).argv[:2]
    ('sbatch', '--parsable')
    """
    argv = (
        "sbatch",
        "--parsable",
        f"--job-name={settings.job_name}",
        f"--comment={settings.comment}",
        *settings.submit_args,
        str(settings.worker_script),
    )
    return Command(argv, {})


def list_command(settings: SlurmSettings) -> Command:
    """``squeue`` for this deployment's jobs, ended ones included, times as Unix seconds."""
    argv = (
        "squeue",
        "--noheader",
        "--states=all",
        f"--name={settings.job_name}",
        f"--format={SQUEUE_FORMAT}",
    )
    return Command(argv, {"SLURM_TIME_FORMAT": "%s"})


def cancel_command(settings: SlurmSettings, job_ids: Collection[str]) -> Command:
    """``scancel`` for exactly these job ids, and only if they carry this deployment's job name."""
    return Command(("scancel", "--quiet", f"--name={settings.job_name}", *sorted(job_ids)), {})


def parse_job_id(stdout: str) -> str:
    """The job id from ``sbatch --parsable`` (``"123"`` or ``"123;cluster"``).

    >>> parse_job_id("4711;dask-deploy\\n")
    '4711'
    """
    job_id = stdout.strip().split(";", 1)[0]
    if not _JOB_ID.match(job_id):
        raise SlurmCommandError(f"sbatch printed {stdout!r}, expected a job id")
    return job_id


def job_state(slurm_state: str) -> InstanceState:
    """Map squeue's state to the instance's: pending, running or exited."""
    state = slurm_state.split()[0] if slurm_state.strip() else ""
    if state in PENDING_STATES:
        return InstanceState.PENDING
    if state in EXITED_STATES:
        return InstanceState.EXITED
    return InstanceState.RUNNING


def _unix_time(field: str) -> float | None:
    return float(field) if field.isdigit() else None  # "N/A", "Unknown", "NONE"


def parse_jobs(stdout: str, comment: str) -> list[SlurmJob]:
    """Parse ``squeue --format=SQUEUE_FORMAT``, keeping only jobs with this deployment's comment."""
    jobs = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        job_id, state_name, submitted, ends, job_comment = line.split("|", 4)
        if job_comment != comment:
            continue
        state = job_state(state_name)
        instance = Instance(job_id, state, _unix_time(submitted) or 0.0)
        ends_at = _unix_time(ends) if state is InstanceState.RUNNING else None
        jobs.append(SlurmJob(instance, ends_at))
    return jobs


def as_seen_by_the_loop(job: SlurmJob, now: float, replace_before_end: float) -> Instance:
    """The job's instance, reported EXITED when it runs out of walltime within the lead time."""
    leaving = (
        job.instance.state is InstanceState.RUNNING
        and job.ends_at is not None
        and job.ends_at - now <= replace_before_end
    )
    return replace(job.instance, state=InstanceState.EXITED) if leaving else job.instance


async def _run(command: Command, timeout: float) -> str:
    """Execute one command; return its stdout, or raise with its stderr or on ``timeout``."""
    process = await asyncio.create_subprocess_exec(
        *command.argv,
        env={**os.environ, **command.env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        raise SlurmCommandError(
            f"{' '.join(command.argv)} did not finish within {timeout:g}s "
            "(backend.options.command_timeout); killed it"
        ) from None
    finally:
        if process.returncode is None:  # timed out, or the tick was cancelled
            process.kill()
            await process.wait()
    if process.returncode != 0:
        raise SlurmCommandError(
            f"{' '.join(command.argv)} exited {process.returncode}: {stderr.decode().strip()}"
        )
    return stdout.decode()


class SlurmBackend:
    """Submits, lists and cancels one deployment's worker jobs."""

    def __init__(self, settings: SlurmSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock

    async def jobs(self) -> list[SlurmJob]:
        """This deployment's jobs as squeue reports them, with their expected end."""
        stdout = await _run(list_command(self.settings), self.settings.command_timeout)
        return parse_jobs(stdout, self.settings.comment)

    async def instances(self) -> list[Instance]:
        now, lead = self.clock(), self.settings.replace_before_end
        return [as_seen_by_the_loop(job, now, lead) for job in await self.jobs()]

    async def scale_up(self, n: int) -> None:
        for _ in range(n - count_requested(await self.instances())):
            parse_job_id(await _run(submit_command(self.settings), self.settings.command_timeout))

    async def scale_down(self, names: Collection[str]) -> None:
        jobs = await self.jobs()
        live = {j.instance.name for j in jobs if j.instance.state is not InstanceState.EXITED}
        doomed = live & set(names)
        if doomed:
            await _run(cancel_command(self.settings, doomed), self.settings.command_timeout)

    async def close(self) -> None:
        return None


def create(context: BackendContext) -> Backend:
    """Build the SLURM backend from the scaler configuration's ``backend.options``."""
    return SlurmBackend(load_settings(context))


__all__ = ["SlurmBackend", "create"]
