"""PBS: Torque, OpenPBS / PBS Professional, and SLURM's Torque commands. A dialect of :mod:`.batch`.

Options: those of every batch backend (:mod:`dask_deploy.backends.batch`); ``submit_args`` are
extra ``qsub`` arguments, e.g. ``["-A", "proj-42"]``.

Every worker job is submitted as ``qsub -N <job_name> <script>``; the worker script starts
``dask worker --name $PBS_JOBID``, so ``Instance.name`` is the job id as qsub printed it and
qstat lists it (``123.server``; plain ``123`` under SLURM's Torque commands).

Listing is ``qstat -f``, the full display every flavour prints alike (``Job Id: <id>`` and one
``attribute = value`` per line). It shows every user's jobs the server lets you see (``-u``
does not combine with ``-f``), so the parser keeps those whose ``Job_Owner`` is the user the
scaler runs as; there is no free-text field of the job's, so the job name is the mark: the
default ``<deployment>-worker`` is unique per deployment, and a custom ``job_name`` must be too.
PBS Professional's JSON form (``qstat -f -F json``) is read as well. Times are ctime(3) in
local time; a running job ends at its start (``start_time`` in Torque, ``stime`` in PBS
Professional, ``mtime`` from SLURM's qstat, which has neither) + ``Resource_List.walltime``.
A pending job's reason is its ``comment`` when the server gives one (PBS Professional: "Not
Running: ...").

Only builders and parsers live here; :class:`~.batch.BatchBackend` runs them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from datetime import datetime

from ..contract import Instance, InstanceState
from .batch import BatchCommandError, BatchJob, BatchSettings, Command, create_backend

#: job_state letters (Torque qstat(1B); PBS Professional adds B, F, M, U, X).
PENDING_STATES = frozenset("QHWT")
EXITED_STATES = frozenset("ECFMX")
_JOB_ID = re.compile(r"^\d+(?:\[\d*\])?(?:\.[\w.-]+)?$")
_JOB_HEADER = re.compile(r"^Job Id:\s*(\S+)")
_ATTRIBUTE = re.compile(r"^\s+([\w.]+) = (.*)$")


def submit_command(settings: BatchSettings) -> Command:
    """``qsub -N <job_name>`` for one worker job.

    >>> from pathlib import Path
    >>> submit_command(BatchSettings("dask", Path("w.sh"), "dask-worker", ())).argv
    ('qsub', '-N', 'dask-worker', 'w.sh')
    """
    return Command(
        ("qsub", "-N", settings.job_name, *settings.submit_args, str(settings.worker_script))
    )


#: What SLURM's Torque-compatible qstat (slurm-wlm-torque) exits with when it lists no job at
#: all: Torque's "Unknown Job Id" (PBSE_UNKJOBID, 15001, as an exit status). Torque and PBS
#: Professional list nothing and exit 0.
NO_JOB_LISTED = 153


def status_command(settings: BatchSettings) -> Command:
    """``qstat -f``: the full display of the jobs the server shows (none is not an error)."""
    return Command(("qstat", "-f"), found_nothing=frozenset({NO_JOB_LISTED}))


def cancel_command(settings: BatchSettings, job_ids: Collection[str]) -> Command:
    """``qdel`` for exactly these job ids."""
    return Command(("qdel", *sorted(job_ids)))


def parse_job_id(stdout: str) -> str:
    """The job id qsub printed on its last line: ``123.server`` (Torque, PBS), ``123`` (SLURM).

    >>> parse_job_id("4711.headnode.example.org\\n")
    '4711.headnode.example.org'
    """
    lines = stdout.strip().splitlines()
    job_id = lines[-1].strip() if lines else ""
    if not _JOB_ID.match(job_id):
        raise BatchCommandError(f"qsub printed {stdout!r}, expected a job id")
    return job_id


def job_state(native_state: str) -> InstanceState:
    """Map job_state to pending (Q, H, W, T), exited (E, C, F, M, X) or running (R, S, U, B...)."""
    state = native_state.strip()[:1]
    if state in PENDING_STATES:
        return InstanceState.PENDING
    if state in EXITED_STATES:
        return InstanceState.EXITED
    return InstanceState.RUNNING


def ctime(text: str | None) -> float | None:
    """``Sun Dec  6 02:18:39 2026`` (local time) as Unix seconds; None if absent or other."""
    try:
        return datetime.strptime(" ".join((text or "").split()), "%a %b %d %H:%M:%S %Y").timestamp()
    except ValueError:
        return None


def walltime(text: str | None) -> float | None:
    """``Resource_List.walltime``: ``[[hh:]mm:]ss`` as seconds; None if absent or other.

    >>> walltime("01:30:00"), walltime("90"), walltime(None)
    (5400.0, 90.0, None)
    """
    parts = (text or "").strip().split(":")
    if not (1 <= len(parts) <= 3) or not all(p.isdigit() for p in parts):
        return None
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return float(seconds)


def full_display(stdout: str) -> dict[str, dict[str, str]]:
    """``qstat -f`` as job id -> attributes. Long values continue on lines starting with a tab."""
    jobs: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    last = ""
    for line in stdout.splitlines():
        header = _JOB_HEADER.match(line)
        attribute = _ATTRIBUTE.match(line)
        if header:
            current = jobs.setdefault(header.group(1), {})
        elif current is not None and attribute:
            last = attribute.group(1)
            current[last] = attribute.group(2).strip()
        elif current is not None and last and line.startswith("\t") and line.strip():
            current[last] += line.strip()  # a value wrapped by qstat
    return jobs


def json_display(stdout: str) -> dict[str, dict[str, str]]:
    """PBS Professional's ``qstat -f -F json`` as job id -> attributes, nested ones flattened
    the way the text display names them (``Resource_List.walltime``)."""
    jobs: dict[str, dict[str, str]] = {}
    for job_id, attributes in json.loads(stdout).get("Jobs", {}).items():
        flat: dict[str, str] = {}
        for key, value in attributes.items():
            if isinstance(value, Mapping):
                flat.update({f"{key}.{inner}": str(v) for inner, v in value.items()})
            else:
                flat[key] = str(value)
        jobs[job_id] = flat
    return jobs


def parse_status(stdout: str, settings: BatchSettings) -> list[BatchJob]:
    """``qstat -f`` (or ``-f -F json``) as records, only the user's jobs named ``job_name``."""
    try:
        displayed = (
            json_display(stdout) if stdout.lstrip().startswith("{") else full_display(stdout)
        )
    except (ValueError, AttributeError):
        raise BatchCommandError(f"qstat printed {stdout[:200]!r}, expected qstat -f") from None
    jobs = []
    for job_id, attributes in displayed.items():
        owner = attributes.get("Job_Owner", "").split("@", 1)[0]
        if attributes.get("Job_Name") != settings.job_name or owner != settings.user:
            continue
        state = job_state(attributes.get("job_state", ""))
        submitted = ctime(attributes.get("qtime")) or ctime(attributes.get("ctime"))
        started = next(
            (t for key in ("start_time", "stime", "mtime") if (t := ctime(attributes.get(key)))),
            None,
        )
        limit = walltime(attributes.get("Resource_List.walltime"))
        ends_at = None
        if state is InstanceState.RUNNING and started is not None and limit is not None:
            ends_at = started + limit
        reason = attributes.get("comment") if state is InstanceState.PENDING else None
        jobs.append(BatchJob(Instance(job_id, state, submitted or 0.0), ends_at, reason))
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
