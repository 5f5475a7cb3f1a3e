"""Grid Engine (SGE, Son of Grid Engine, Open Grid Scheduler): a dialect of :mod:`.batch`.

Options: those of every batch backend (:mod:`dask_deploy.backends.batch`); ``submit_args`` are
extra ``qsub`` arguments, e.g. ``["-P", "physics"]``.

Every worker job is submitted as ``qsub -terse -N <job_name>``; the worker script starts
``dask worker --name $JOB_ID``, so ``Instance.name`` is the job id the scheduler knows.

Own jobs only: ``qstat -u <user>`` lists the jobs of the user the scaler runs as (the parser
checks the owner again), and the job list has no free-text field, so the job name is the mark:
the default ``<deployment>-worker`` is unique per deployment, and a custom ``job_name`` must be
too. The templates also give every job the account string ``dask-deploy.<deployment>`` (``-A``;
SGE refuses a '/'), for ``qacct``.

Grid Engine forgets a job once it ended (``qstat`` lists only queued and running jobs), so an
ended job is simply no longer listed. Pending jobs carry no reason in the job list: ``qw`` is
"waiting in the queue", ``h`` "held"; a job in error (``E``) never starts and counts as exited.

Only builders and parsers live here; :class:`~.batch.BatchBackend` runs them.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Collection
from datetime import datetime

from ..contract import Instance, InstanceState
from .batch import BatchCommandError, BatchJob, BatchSettings, Command, create_backend

_JOB_ID = re.compile(r"^(\d+)(?:\.[-\d:]+)?$")  # "42", or "42.1-10:1" for an array job


def submit_command(settings: BatchSettings) -> Command:
    """``qsub`` for one worker job, printing only its id (``-terse``).

    >>> from pathlib import Path
    >>> submit_command(BatchSettings("dask", Path("w.sh"), "dask-worker", ())).argv
    ('qsub', '-terse', '-N', 'dask-worker', 'w.sh')
    """
    argv = (
        "qsub",
        "-terse",
        "-N",
        settings.job_name,
        *settings.submit_args,
        str(settings.worker_script),
    )
    return Command(argv)


def status_command(settings: BatchSettings) -> Command:
    """``qstat -xml -r -u <user>``: the user's queued and running jobs, with their h_rt."""
    return Command(("qstat", "-xml", "-r", "-u", settings.user))


def cancel_command(settings: BatchSettings, job_ids: Collection[str]) -> Command:
    """``qdel`` for exactly these job ids (qdel cannot also filter by name)."""
    return Command(("qdel", *sorted(job_ids, key=int)))


def parse_job_id(stdout: str) -> str:
    """The job id from ``qsub -terse``: the last line, ``42`` (or ``42.1-10:1`` for arrays).

    >>> parse_job_id("4711\\n")
    '4711'
    """
    lines = stdout.strip().splitlines()
    match = _JOB_ID.match(lines[-1].strip()) if lines else None
    if match is None:
        raise BatchCommandError(f"qsub -terse printed {stdout!r}, expected a job id")
    return match.group(1)


def job_state(native_state: str) -> InstanceState:
    """Map qstat's state letters to pending, running or exited.

    Letters (qstat(1)): d deletion, E error, h hold, q queued, w waiting, r running,
    t transferring, R restarted, s/S/T suspended. A job being deleted or in error is gone (it
    never runs again); queued or held is pending; everything else is running.

    >>> [job_state(s).value for s in ("qw", "hqw", "r", "t", "Eqw", "dr", "S")]
    ['pending', 'pending', 'running', 'running', 'exited', 'exited', 'running']
    """
    if "d" in native_state or "E" in native_state:
        return InstanceState.EXITED
    if "q" in native_state or "w" in native_state:
        return InstanceState.PENDING
    return InstanceState.RUNNING


def pending_reason(native_state: str) -> str:
    """What a pending job waits for, in the words qstat's state letters stand for."""
    return "held" if "h" in native_state else "waiting in the queue"


def seconds(h_rt: str) -> float | None:
    """A time value of sge_types(1): ``3600``, ``1:00:00`` or ``::3600``; None if neither.

    >>> seconds("3600"), seconds("1:30:00"), seconds("::90"), seconds("INFINITY")
    (3600.0, 5400.0, 90.0, None)
    """
    parts = h_rt.strip().split(":")
    if len(parts) not in (1, 3) or not all(p.isdigit() or p == "" for p in parts):
        return None
    hours, minutes, secs = ["0", "0", *parts][-3:] if len(parts) == 1 else parts
    return float(int(hours or 0) * 3600 + int(minutes or 0) * 60 + int(secs or 0))


def _local_time(text: str | None) -> float | None:
    # qstat -xml prints local time without a zone: "2026-12-06T01:50:28" (8.1.9 may add ".123").
    try:
        return datetime.fromisoformat(text.strip()).timestamp() if text else None
    except ValueError:
        return None


def parse_jobs(stdout: str, job_name: str, user: str) -> list[BatchJob]:
    """``qstat -xml -r`` as records, only the jobs of ``user`` named ``job_name``.

    A running job lists its start time (``JAT_start_time``), a pending one its submit time
    (``JB_submission_time``): that time is the instance's ``requested_at``. A running job with
    an ``h_rt`` request ends at start + h_rt.
    """
    root = ElementTree.fromstring(stdout)
    jobs = []
    for element in root.iter("job_list"):
        name = element.findtext("full_job_name") or element.findtext("JB_name")
        job_id = (element.findtext("JB_job_number") or "").strip()
        if name != job_name or element.findtext("JB_owner") != user or not job_id:
            continue
        native = (element.findtext("state") or "").strip()
        state = job_state(native)
        started = _local_time(element.findtext("JAT_start_time"))
        submitted = _local_time(element.findtext("JB_submission_time"))
        h_rt = next(
            (r.text for r in element.iter("hard_request") if r.get("name") in ("h_rt", "rt")),
            None,
        )
        limit = seconds(h_rt) if h_rt else None
        ends_at = None
        if state is InstanceState.RUNNING and started is not None and limit is not None:
            ends_at = started + limit
        reason = pending_reason(native) if state is InstanceState.PENDING else None
        instance = Instance(job_id, state, submitted or started or 0.0)
        jobs.append(BatchJob(instance, ends_at, reason))
    return jobs


def parse_status(stdout: str, settings: BatchSettings) -> list[BatchJob]:
    """This deployment's jobs from ``status_command``'s output."""
    return parse_jobs(stdout, settings.job_name, settings.user)


#: The registry's factory (backends.BUILTIN): a BatchBackend over this module.
create = create_backend(__name__)


__all__ = [
    "cancel_command",
    "create",
    "job_state",
    "parse_job_id",
    "parse_status",
    "status_command",
    "submit_command",
]
