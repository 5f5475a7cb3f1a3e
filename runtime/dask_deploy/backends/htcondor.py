"""HTCondor as a dialect of the batch core: ``condor_submit``, ``condor_q``, ``condor_rm``.

Options are the batch core's (:mod:`dask_deploy.backends.batch`); ``worker_script`` is the
worker's *submit description* (``templates/htcondor/worker.sub``), whose job starts
``dask worker --name $(ClusterId).$(ProcId)``: the job id ``condor_submit -terse`` prints is
the worker's name at the scheduler.

Scope: HTCondor has no free-text job comment, so every job carries two custom ClassAd
attributes, appended at submit time: ``DaskDeployment`` (``dask-deploy/<deployment>``) and
``DaskDeployOwner`` (the user the scaler runs as). ``condor_q`` and ``condor_rm`` are
restricted by a constraint on both, plus the ids for ``condor_rm``, so neither another
deployment's nor another user's job is ever counted or removed, even by a queue superuser.

States (``JobStatus``): 1 idle -> pending; 2 running, 6 transferring output, 7 suspended ->
running; 3 removed, 4 completed -> exited; 5 held -> exited, with the ``HoldReason`` as the
instance's reason. A held job never runs again by itself but stays in the queue, so the backend
removes it (``condor_rm``) and logs why HTCondor held it; the loop replaces it.

Ended jobs leave ``condor_q`` at once (no ``leave_in_queue``): a job that ends between two
listings is simply not listed any more, which the loop counts the same as exited.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection

from ..contract import Backend, BackendContext, Instance, InstanceState
from .batch import (
    DEFAULT_COMMAND_TIMEOUT,
    BatchBackend,
    BatchCommandError,
    BatchJob,
    BatchSettings,
    Command,
    as_seen_by_the_loop,
    load_settings,
)

logger = logging.getLogger("dask_deploy.backends.htcondor")

#: ``condor_q -af:t`` columns; HoldReason may contain spaces, so it is last.
STATUS_ATTRIBUTES = ("ClusterId", "ProcId", "JobStatus", "QDate", "DaskDeployOwner", "HoldReason")
PENDING = {"1"}
EXITED = {"3", "4"}
HELD = "5"
# "23.0 - 23.0": the first and last job id of the cluster condor_submit -terse queued.
_TERSE = re.compile(r"^\s*(\d+)\.(\d+)\s+-\s+(\d+)\.(\d+)\s*$")
_JOB_ID = re.compile(r"^(\d+)\.(\d+)$")


def _string(value: str) -> str:
    """A ClassAd string literal (the values are our own names: no quotes nor backslashes)."""
    if '"' in value or "\\" in value:
        raise BatchCommandError(f"{value!r} cannot be quoted as a ClassAd string")
    return f'"{value}"'


def scope(settings: BatchSettings) -> str:
    """The ClassAd constraint that selects this deployment's jobs of this user.

    >>> from pathlib import Path
    >>> scope(BatchSettings("dask", Path("w.sub"), "dask-worker", (), user="ada"))
    '(DaskDeployment == "dask-deploy/dask" && DaskDeployOwner == "ada")'
    """
    deployment, owner = _string(settings.comment), _string(settings.user)
    return f"(DaskDeployment == {deployment} && DaskDeployOwner == {owner})"


def submit_command(settings: BatchSettings) -> Command:
    """``condor_submit -terse`` of the worker submit description, named and marked."""
    argv = (
        "condor_submit",
        "-terse",
        "-batch-name",
        settings.job_name,
        "-append",
        f"+DaskDeployment = {_string(settings.comment)}",
        "-append",
        f"+DaskDeployOwner = {_string(settings.user)}",
        *settings.submit_args,
        str(settings.worker_script),
    )
    return Command(argv)


def status_command(settings: BatchSettings) -> Command:
    """``condor_q`` for this deployment's jobs, one tab-separated line each."""
    return Command(("condor_q", "-constraint", scope(settings), "-af:t", *STATUS_ATTRIBUTES))


def cancel_command(settings: BatchSettings, job_ids: Collection[str]) -> Command:
    """``condor_rm`` of exactly these job ids, and only while they are this deployment's."""
    ids = []
    for job_id in sorted(job_ids):
        match = _JOB_ID.match(job_id)
        if match is None:
            raise BatchCommandError(f"{job_id!r} is not an HTCondor job id (ClusterId.ProcId)")
        ids.append(f"(ClusterId == {match[1]} && ProcId == {match[2]})")
    constraint = f"({' || '.join(ids)}) && {scope(settings)}"
    return Command(("condor_rm", "-constraint", constraint))


def parse_job_id(stdout: str) -> str:
    """The job id from ``condor_submit -terse`` (one job per submit).

    >>> parse_job_id("23.0 - 23.0\\n")
    '23.0'
    """
    lines = [line for line in stdout.splitlines() if line.strip()]
    match = _TERSE.match(lines[-1]) if lines else None
    if match is None or match.group(1, 2) != match.group(3, 4):
        raise BatchCommandError(f"condor_submit printed {stdout!r}, expected one job id")
    return f"{match[1]}.{match[2]}"


def job_state(native_state: str) -> InstanceState:
    """Map ``JobStatus`` to the instance's state; an unknown status counts as running."""
    if native_state in PENDING:
        return InstanceState.PENDING
    if native_state in EXITED or native_state == HELD:
        return InstanceState.EXITED
    return InstanceState.RUNNING


def parse_status(stdout: str, settings: BatchSettings) -> list[BatchJob]:
    """This deployment's jobs from ``condor_q -af:t`` (``STATUS_ATTRIBUTES``)."""
    jobs = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        cluster, proc, status, queued, owner, hold_reason = line.split("\t", 5)
        if owner != settings.user:
            continue
        held = status == HELD
        reason = hold_reason if held and hold_reason != "undefined" else None
        queued_at = float(queued) if queued.isdigit() else 0.0
        instance = Instance(f"{cluster}.{proc}", job_state(status), queued_at, reason)
        jobs.append(BatchJob(instance, None, "idle" if status in PENDING else None))
    return jobs


class HTCondorBackend(BatchBackend):
    """The batch backend, plus removing held jobs: HTCondor keeps them in the queue."""

    def __init__(self, settings: BatchSettings) -> None:
        from . import htcondor  # this module is the dialect

        super().__init__(htcondor, settings)
        self._removed_held: set[str] = set()

    async def instances(self) -> list[Instance]:
        jobs = await self.jobs()
        held = {
            job.instance.name: job.instance.reason or "no reason given"
            for job in jobs
            if job.instance.reason is not None and job.instance.name not in self._removed_held
        }
        if held:
            for name, reason in sorted(held.items()):
                logger.warning("job %s held by HTCondor: %s; removing it", name, reason)
            await self._run(cancel_command(self.settings, held))
            self._removed_held |= held.keys()
        now, lead = self.clock(), self.settings.replace_before_end
        return [as_seen_by_the_loop(job, now, lead) for job in jobs]


def create(context: BackendContext) -> Backend:
    """Build the HTCondor backend from the scaler configuration's ``backend.options``."""
    return HTCondorBackend(load_settings(context))


__all__ = [
    "DEFAULT_COMMAND_TIMEOUT",
    "cancel_command",
    "create",
    "job_state",
    "parse_job_id",
    "parse_status",
    "status_command",
    "submit_command",
]
