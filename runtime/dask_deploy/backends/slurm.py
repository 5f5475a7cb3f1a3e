"""SLURM: each worker is one batch job, named by its job id. A dialect of :mod:`.batch`.

Options: those of every batch backend (:mod:`dask_deploy.backends.batch`); ``submit_args`` are
extra ``sbatch`` arguments, e.g. ``["--qos=high"]``.

Every job gets ``--job-name`` and ``--comment dask-deploy/<deployment>``; listing and cancelling
filter on both and on the user (``--user``), so the backend never touches another deployment's
jobs, nor another user's deployment of the same name. The worker script starts
``dask worker --name $SLURM_JOB_ID``, so ``Instance.name`` is the job id the scheduler knows.

Only builders and parsers live here; :class:`~.batch.BatchBackend` runs them.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from ..contract import Instance, InstanceState
from .batch import (
    DEFAULT_COMMAND_TIMEOUT,
    BatchCommandError,
    BatchJob,
    BatchSettings,
    Command,
    as_seen_by_the_loop,
    create_backend,
    load_settings,
)

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
# Job id, state, submit time, expected end, user, reason, comment; the comment may contain
# anything, so last.
SQUEUE_FORMAT = "%i|%T|%V|%e|%u|%r|%k"
_JOB_ID = re.compile(r"^\d+$")

# The names SLURM's callers and tests have always used for the shared types.
SlurmSettings = BatchSettings
SlurmJob = BatchJob
SlurmCommandError = BatchCommandError


def submit_command(settings: BatchSettings) -> Command:
    """``sbatch`` for one worker job, printing only its id.

    >>> from pathlib import Path
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


def status_command(settings: BatchSettings) -> Command:
    """``squeue`` for this deployment's jobs, ended ones included, times as Unix seconds."""
    argv = (
        "squeue",
        "--noheader",
        "--states=all",
        f"--user={settings.user}",
        f"--name={settings.job_name}",
        f"--format={SQUEUE_FORMAT}",
    )
    return Command(argv, {"SLURM_TIME_FORMAT": "%s"})


list_command = status_command


def cancel_command(settings: BatchSettings, job_ids: Collection[str]) -> Command:
    """``scancel`` for exactly these job ids, only if they are this user's and carry this
    deployment's job name."""
    argv = (
        "scancel",
        "--quiet",
        f"--user={settings.user}",
        f"--name={settings.job_name}",
        *sorted(job_ids),
    )
    return Command(argv, {})


def parse_job_id(stdout: str) -> str:
    """The job id from ``sbatch --parsable`` (``"123"`` or ``"123;cluster"``).

    >>> parse_job_id("4711;dask-deploy\\n")
    '4711'
    """
    job_id = stdout.strip().split(";", 1)[0]
    if not _JOB_ID.match(job_id):
        raise BatchCommandError(f"sbatch printed {stdout!r}, expected a job id")
    return job_id


def job_state(native_state: str) -> InstanceState:
    """Map squeue's state to the instance's: pending, running or exited."""
    state = native_state.split()[0] if native_state.strip() else ""
    if state in PENDING_STATES:
        return InstanceState.PENDING
    if state in EXITED_STATES:
        return InstanceState.EXITED
    return InstanceState.RUNNING


def _unix_time(field: str) -> float | None:
    return float(field) if field.isdigit() else None  # "N/A", "Unknown", "NONE"


def parse_jobs(stdout: str, comment: str, user: str) -> list[BatchJob]:
    """Parse ``squeue --format=SQUEUE_FORMAT``: the jobs of this user with this comment."""
    jobs = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        job_id, state_name, submitted, ends, owner, reason, job_comment = line.split("|", 6)
        if job_comment != comment or owner != user:
            continue
        state = job_state(state_name)
        instance = Instance(job_id, state, _unix_time(submitted) or 0.0)
        ends_at = _unix_time(ends) if state is InstanceState.RUNNING else None
        waiting = reason if state is InstanceState.PENDING and reason != "None" else None
        jobs.append(BatchJob(instance, ends_at, waiting))
    return jobs


def parse_status(stdout: str, settings: BatchSettings) -> list[BatchJob]:
    """This deployment's jobs from ``status_command``'s output."""
    return parse_jobs(stdout, settings.comment, settings.user)


#: The registry's factory (backends.BUILTIN): a BatchBackend over this module.
create = create_backend(__name__)


# The dialect's functions are public: a module is checked against the Dialect protocol
# through the names it exports.
__all__ = [
    "DEFAULT_COMMAND_TIMEOUT",
    "as_seen_by_the_loop",
    "cancel_command",
    "create",
    "job_state",
    "load_settings",
    "parse_job_id",
    "parse_status",
    "status_command",
    "submit_command",
]
