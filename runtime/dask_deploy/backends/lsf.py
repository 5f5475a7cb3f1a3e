"""IBM Spectrum LSF: a dialect of :mod:`.batch`.

Options: those of every batch backend (:mod:`dask_deploy.backends.batch`); ``submit_args`` are
extra ``bsub`` arguments, e.g. ``["-P", "physics"]``.

Every worker job is submitted as ``bsub -J <job_name> -Jd dask-deploy/<deployment> < script``
(the script on stdin, so its ``#BSUB`` lines count, as LSF's documentation submits scripts);
the worker script starts ``dask worker --name $LSB_JOBID``, so ``Instance.name`` is the job id.
Listing is ``bjobs -a -u <user> -J <job_name> -o "..." -json`` (the jobs of the user the scaler
runs as, finished ones included) and keeps the user's jobs whose description is this deployment's
mark; cancelling is ``bkill`` of
exactly the ids. Times carry the year (``LSB_DISPLAY_YEAR=Y``) and read in local time.

Only builders and parsers live here; :class:`~.batch.BatchBackend` runs them. Tested against
the stand-in :mod:`dask_deploy.testing.lsf`, not a real LSF.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from datetime import datetime

from ..contract import Instance, InstanceState
from .batch import BatchCommandError, BatchJob, BatchSettings, Command, create_backend

#: bjobs' STAT values (bjobs(1), "Output: STAT"). Anything else counts as running.
PENDING_STATES = frozenset({"PEND", "PSUSP", "WAIT"})
EXITED_STATES = frozenset({"DONE", "EXIT", "ZOMBI"})
#: The fields ``parse_status`` reads, in ``bjobs -o`` spelling.
FIELDS = "jobid user job_name job_description stat submit_time start_time runtimelimit pend_reason"
_SUBMITTED = re.compile(r"Job <(\d+)> is submitted")
# "bsub < script" is how LSF reads #BSUB lines; sh does the redirection, the builder stays pure.
_BSUB_FROM_STDIN = 'script=$1; shift; exec bsub "$@" < "$script"'


def submit_command(settings: BatchSettings) -> Command:
    """``bsub < worker_script`` with the job's name and this deployment's mark.

    >>> from pathlib import Path
    >>> submit_command(BatchSettings("dask", Path("w.sh"), "dask-worker", ())).argv[4:]
    ('w.sh', '-J', 'dask-worker', '-Jd', 'dask-deploy/dask')
    """
    argv = (
        "sh",
        "-c",
        _BSUB_FROM_STDIN,
        "bsub-from-stdin",  # $0
        str(settings.worker_script),
        "-J",
        settings.job_name,
        "-Jd",
        settings.comment,
        *settings.submit_args,
    )
    return Command(argv)


def status_command(settings: BatchSettings) -> Command:
    """``bjobs -a -u <user> -J <job_name> -o FIELDS -json``: the user's jobs, recently finished
    ones included."""
    argv = ("bjobs", "-a", "-u", settings.user, "-J", settings.job_name, "-o", FIELDS, "-json")
    return Command(argv, {"LSB_DISPLAY_YEAR": "Y"})


def cancel_command(settings: BatchSettings, job_ids: Collection[str]) -> Command:
    """``bkill`` exactly these job ids."""
    return Command(("bkill", *sorted(job_ids, key=int)))


def parse_job_id(stdout: str) -> str:
    """The job id from bsub's ``Job <42> is submitted to default queue <normal>.``.

    >>> parse_job_id("Job <4711> is submitted to queue <short>.\\n")
    '4711'
    """
    match = _SUBMITTED.search(stdout)
    if match is None:
        raise BatchCommandError(f"bsub printed {stdout!r}, expected 'Job <id> is submitted'")
    return match.group(1)


def job_state(native_state: str) -> InstanceState:
    """Map bjobs' STAT to pending, running or exited (USUSP, SSUSP, UNKWN hold their job)."""
    state = native_state.strip()
    if state in PENDING_STATES:
        return InstanceState.PENDING
    if state in EXITED_STATES:
        return InstanceState.EXITED
    return InstanceState.RUNNING


def lsf_time(text: str) -> float | None:
    """``Dec  6 01:50 2026`` (``LSB_DISPLAY_YEAR=Y``; a trailing E or L dropped), local time.

    None for an empty field, or one without the year (it cannot be placed in time).
    """
    words = text.split()
    if words and words[-1] in ("E", "L"):
        words = words[:-1]
    try:
        return datetime.strptime(" ".join(words), "%b %d %H:%M %Y").timestamp()
    except ValueError:
        return None


def runtime_limit(text: str) -> float | None:
    """RUNTIMELIMIT in seconds: minutes (``1440.0``) or ``hh:mm[:ss]`` (``-hms``); else None.

    >>> runtime_limit("60.0"), runtime_limit("01:30:00"), runtime_limit("")
    (3600.0, 5400.0, None)
    """
    text = text.strip().split("/", 1)[0]
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text) * 60
    if re.fullmatch(r"\d+:\d{2}(:\d{2})?", text):
        parts = [int(p) for p in text.split(":")] + [0]
        return float(parts[0] * 3600 + parts[1] * 60 + parts[2])
    return None


def parse_status(stdout: str, settings: BatchSettings) -> list[BatchJob]:
    """``bjobs -o FIELDS -json`` as records, only this deployment's jobs (name and mark)."""
    try:
        records = json.loads(stdout).get("RECORDS", [])
    except (ValueError, AttributeError):
        raise BatchCommandError(f"bjobs printed {stdout[:200]!r}, expected -json output") from None
    jobs = []
    for record in records:
        if "ERROR" in record or record.get("JOB_NAME") != settings.job_name:
            continue
        if record.get("JOB_DESCRIPTION") != settings.comment or record.get("USER") != settings.user:
            continue
        state = job_state(record.get("STAT", ""))
        started = lsf_time(record.get("START_TIME", ""))
        limit = runtime_limit(record.get("RUNTIMELIMIT", ""))
        ends_at = None
        if state is InstanceState.RUNNING and started is not None and limit is not None:
            ends_at = started + limit
        reason = record.get("PEND_REASON", "").strip().rstrip(";") or None
        instance = Instance(
            str(record["JOBID"]), state, lsf_time(record.get("SUBMIT_TIME", "")) or 0.0
        )
        jobs.append(BatchJob(instance, ends_at, reason if state is InstanceState.PENDING else None))
    return jobs


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
