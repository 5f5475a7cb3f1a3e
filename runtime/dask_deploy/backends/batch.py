"""Batch systems (SLURM, SGE, PBS, LSF, ...): one backend over a dialect of pure functions.

Every batch system is driven the same way: submit one job per worker, list the jobs, cancel
some of them. What differs is the spelling of three commands and the shape of their output.
That spelling is a :class:`Dialect`: a module of pure functions that build :class:`Command`
values and parse text. Everything with behaviour lives here, once: the one runner that executes
a command (:func:`run_command`), and :class:`BatchBackend`, which implements the
:class:`~dask_deploy.backends.Backend` protocol on top of a dialect.

A new batch system is one dialect file under ``backends/`` (see :class:`Dialect` for what it
must define, and ``backends/slurm.py`` for a complete one), one template folder and one line in
the backend registry. Its registry factory is one line, at the end of the dialect module::

    create = create_backend(__name__)  # a BatchBackend over this module

Options every batch backend takes (``backend.options`` in the scaler configuration)::

    worker_script: /path/to/worker-job.sh   # required: the job script that starts one worker
    job_name: dask-worker                   # optional, default "<deployment>-worker"
    submit_args: []                         # optional: extra arguments of the submit command
    replace_before_end: 0                   # optional: seconds; see "Walltime" below
    command_timeout: 30                     # optional: seconds; see "Timeouts" below
    status_interval: 10                     # optional: seconds; see "Polling" below
    retire_before_end: 0                    # optional: seconds; see "Walltime" below
    max_held: null                          # optional: most jobs held at once (maximum + surge)

Scope: a deployment's jobs are the jobs of the user the scaler runs as that carry the
deployment's job name and mark (``dask-deploy/<deployment>``). The status and cancel commands
filter on the user and the name, so two users who both keep the default deployment name never
count nor cancel each other's jobs, even where one of them may cancel any job (an operator).

Polling: the status command runs at most once per ``status_interval`` seconds (default 10);
in between, the backend answers from the last listing, updated by its own submits (a new job
is pending) and cancels (a cancelled job has exited). A controller serves every user of a
cluster; a scaler that listed its jobs every second would cost it ~86k calls a day. Changes
made by others (a job starting, ending at its walltime, cancelled by hand) are seen at the
next listing, at most ``status_interval`` later.

Queue waits: a pending job waits for the batch system (Resources, Priority, a QOS limit, ...),
not for its worker. Its instance says so: ``reason`` is the batch system's reason (or "queued"
when it gives none, just submitted) with ``reason_kind`` QUEUED, so the loop never cancels it
for being slow (``startup_timeout`` counts from when the job started) and logs the reason
instead. Cancelling would only lose its place in the queue.

Walltime: a worker job ends at its time limit. A running job within ``replace_before_end``
seconds of its end is *leaving* and reported as EXITED: the loop counts it as gone and requests
its replacement now, while it still works. The handover is then driven by the loop
(:class:`HandsOverAtWalltime`): it retires the leaving worker through the scheduler once a
replacement has registered, or when it is idle, or at the latest ``retire_before_end`` seconds
before the end, so its data moves while there is time; the worker's own ``--lifetime`` is only
a backstop shortly before the hard kill. ``scale_down`` and cleanup still cancel leaving jobs,
because they look at the batch system's own state. A leaving job is still held: with
``max_held`` set, ``scale_up`` never holds more jobs than that (the deployment's maximum plus
its ``replacement_surge``), so replacements wait while too many leave at once.

Timeouts: a command that has not finished after ``command_timeout`` seconds (default 30: above
SLURM's own MessageTimeout, default 10 s, and its connect retries) is killed and the call fails,
so a hung or stopped controller holds one tick instead of the scaler. A submit killed that way
may still have been accepted; its job is then listed on the next tick and counted, because every
job carries the deployment's name and mark.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import pwd
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

from .._errors import SettingsError
from ..contract import (
    Backend,
    BackendContext,
    BackendFactory,
    Instance,
    InstanceState,
    ReasonKind,
    count_requested,
)
from ..options import BACKEND_OPTIONS, reject_unknown

#: Seconds a submit, status or cancel command may take before it is killed (``command_timeout``).
DEFAULT_COMMAND_TIMEOUT = 30.0
#: Seconds between two runs of the status command (``status_interval``).
DEFAULT_STATUS_INTERVAL = 10.0
#: What ``job_name`` may hold: every batch system accepts these characters in a job name.
JOB_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
OPTIONS = frozenset(
    {
        "command_timeout",
        "job_name",
        "max_held",
        "replace_before_end",
        "retire_before_end",
        "status_interval",
        "submit_args",
        "worker_script",
    }
)


@dataclass(frozen=True)
class Command:
    """One command line, the environment variables it needs beyond the current ones, its stdin.

    >>> Command(("squeue", "--noheader"), {"SLURM_TIME_FORMAT": "%s"}).stdin is None
    True
    """

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    stdin: str | None = None
    """Text written to the command's standard input (e.g. a job script for ``bsub``)."""
    found_nothing: frozenset[int] = frozenset()
    """Exit statuses by which a listing says it found no job at all: with nothing on stdout,
    the output is empty, not an error."""


def current_user() -> str:
    """The name of the user this process runs as: the owner of the jobs it submits.

    From the process's user id, not ``$USER``, which a ``sudo`` or a job environment may carry
    over from someone else.
    """
    return pwd.getpwuid(os.geteuid()).pw_name


class BatchCommandError(RuntimeError):
    """A submit, status or cancel command failed; the message carries its stderr."""


@dataclass(frozen=True)
class BatchSettings:
    """A batch backend's options, validated once by :func:`load_settings`."""

    deployment: str
    worker_script: Path
    job_name: str
    submit_args: tuple[str, ...]
    replace_before_end: float = 0.0
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT
    status_interval: float = DEFAULT_STATUS_INTERVAL
    retire_before_end: float = 0.0
    max_held: int | None = None
    user: str = field(default_factory=lambda: current_user())
    """The user whose jobs these are: the one the scaler runs as, who submits them."""

    @property
    def comment(self) -> str:
        """The mark every job of this deployment carries, beside its job name."""
        return f"dask-deploy/{self.deployment}"


@dataclass(frozen=True)
class BatchJob:
    """One job of the status output: the instance it is, and what the batch system says of it."""

    instance: Instance
    """Job id as the name, pending / running / exited, submit time as ``requested_at``."""
    ends_at: float | None
    """When the batch system will end the job (start + time limit); None unless it runs."""
    reason: str | None = None
    """Why a pending job waits, as the batch system says it ("Resources", "Priority", ...)."""


class Dialect(Protocol):
    """How one batch system spells submit, status and cancel: pure functions, no I/O.

    A dialect is a *module* defining exactly these functions and listing them in its
    ``__all__`` (mypy checks a module against this protocol through the names it exports).
    None of them runs anything: they build :class:`Command` values, which
    :class:`BatchBackend` executes with :func:`run_command`, and parse the text those commands
    printed. So every one of them is unit-tested with plain strings, from samples of the real
    system's output.

    The contract the backend relies on:

    - Every job of a deployment is submitted with ``settings.job_name`` as its job name and
      ``settings.comment`` (``dask-deploy/<deployment>``) somewhere the status output shows
      (SLURM: ``--comment``). ``parse_status`` keeps only the jobs carrying both, so two
      deployments with the same job name never see each other's jobs.
    - The status command lists only jobs of ``settings.user`` (SLURM: ``--user``), and
      ``parse_status`` drops any other user's job the output still shows: two users with the
      same deployment name must never count each other's jobs.
    - The status command lists this deployment's jobs *including ended ones* the batch system
      still remembers, so a job that ends between two polls is seen as exited, not vanished.
    - ``cancel_command`` names exactly the given job ids and restricts them to
      ``settings.user`` and the job name, so neither a stale id that was reused nor an id of
      another user's job is ever cancelled, even when the scaler runs as an operator.
    - The worker job script starts ``dask worker --name <job id>``: the job id printed by the
      submit command is the worker's name at the scheduler.
    - Times are Unix seconds. A state the dialect does not know maps to RUNNING, so a state
      added by a later release holds its job instead of starting a duplicate.
    """

    def submit_command(self, settings: BatchSettings) -> Command:
        """Submit one worker job (``settings.worker_script``) named and marked as above,
        with ``settings.submit_args`` before the script."""
        ...

    def status_command(self, settings: BatchSettings) -> Command:
        """List this deployment's jobs, ended ones included, in the form ``parse_status``
        reads."""
        ...

    def cancel_command(self, settings: BatchSettings, job_ids: Collection[str]) -> Command:
        """Cancel exactly these job ids (never empty; sort them for a stable command line)."""
        ...

    def parse_job_id(self, stdout: str) -> str:
        """The job id from the submit command's output; raise :class:`BatchCommandError`
        quoting the output when there is none."""
        ...

    def parse_status(self, stdout: str, settings: BatchSettings) -> list[BatchJob]:
        """The status output as records, only jobs of this deployment (``settings.comment``).

        Each record: the job id, ``job_state`` of the native state, the submit time (0 when
        unknown), the expected end for running jobs (else None) and, for pending jobs, the
        batch system's reason for the wait when it reports one (else None).
        """
        ...

    def job_state(self, native_state: str) -> InstanceState:
        """Map the batch system's own state name to pending, running or exited.

        Pending: queued, held, being configured (the worker has not started). Exited: ended,
        failed, cancelled, *and ending* (completing, staging out), so the loop replaces it at
        once. Anything else, including states it does not know, is running.
        """
        ...


def load_settings(context: BackendContext) -> BatchSettings:
    """Validate ``backend.options``; raise :class:`SettingsError` naming the bad key."""
    options = dict(context.options)
    reject_unknown(options, OPTIONS, prefix=BACKEND_OPTIONS)
    script = options.get("worker_script")
    if not isinstance(script, str) or not Path(script).is_file():
        raise SettingsError("backend.options.worker_script", script, "the path of a job script")
    job_name = options.get("job_name", f"{context.deployment}-worker")
    if not isinstance(job_name, str) or not JOB_NAME.fullmatch(job_name):
        raise SettingsError("backend.options.job_name", job_name, "1-64 of [A-Za-z0-9._-]")
    submit_args = options.get("submit_args", [])
    if not isinstance(submit_args, list) or not all(isinstance(a, str) for a in submit_args):
        raise SettingsError("backend.options.submit_args", submit_args, "a list of strings")
    return BatchSettings(
        context.deployment,
        Path(script),
        job_name,
        tuple(submit_args),
        replace_before_end=_seconds(options, "replace_before_end", 0.0, minimum_allowed=True),
        command_timeout=_seconds(options, "command_timeout", DEFAULT_COMMAND_TIMEOUT),
        status_interval=_seconds(
            options, "status_interval", DEFAULT_STATUS_INTERVAL, minimum_allowed=True
        ),
        retire_before_end=_seconds(options, "retire_before_end", 0.0, minimum_allowed=True),
        max_held=_max_held(options.get("max_held")),
    )


def _max_held(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SettingsError("backend.options.max_held", value, "an integer >= 1, or null")
    return value


def _seconds(
    options: Mapping[str, object], key: str, default: float, *, minimum_allowed: bool = False
) -> float:
    value = options.get(key, default)
    allowed = "a number of seconds >= 0" if minimum_allowed else "a number of seconds > 0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingsError(f"backend.options.{key}", value, allowed)
    if value < 0 or (value == 0 and not minimum_allowed):
        raise SettingsError(f"backend.options.{key}", value, allowed)
    return float(value)


async def run_command(command: Command, timeout: float) -> str:
    """Execute one command; return its stdout, or raise with its stderr or on ``timeout``.

    The only place a batch backend starts a process. The current environment passes through
    (``SLURM_CONF``, ``SGE_ROOT``, ...), with ``command.env`` on top.
    """
    process = await asyncio.create_subprocess_exec(
        *command.argv,
        env={**os.environ, **command.env},
        stdin=asyncio.subprocess.DEVNULL if command.stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdin = None if command.stdin is None else command.stdin.encode()
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(stdin), timeout)
    except TimeoutError:
        raise BatchCommandError(
            f"{' '.join(command.argv)} did not finish within {timeout:g}s "
            "(backend.options.command_timeout); killed it"
        ) from None
    finally:
        if process.returncode is None:  # timed out, or the tick was cancelled
            process.kill()
            await process.wait()
    if process.returncode in command.found_nothing and not stdout.strip():
        return ""
    if process.returncode != 0:
        raise BatchCommandError(
            f"{' '.join(command.argv)} exited {process.returncode}: {stderr.decode().strip()}"
        )
    return stdout.decode()


Runner = Callable[[Command, float], Awaitable[str]]


@runtime_checkable
class HandsOverAtWalltime(Protocol):
    """A backend whose instances end at a walltime the loop must hand their work over before."""

    def leaving(self) -> Mapping[str, float]:
        """Name -> Unix time at which the latest safe retirement of a leaving instance is due."""
        ...


def as_seen_by_the_loop(job: BatchJob, now: float, replace_before_end: float) -> Instance:
    """The job's instance, reported EXITED when it runs out of walltime within the lead time,
    and, when it is pending and not stuck, queued for the batch system's reason."""
    instance = job.instance
    if instance.state is InstanceState.PENDING and instance.reason is None:
        return replace(instance, reason=job.reason or "queued", reason_kind=ReasonKind.QUEUED)
    leaving = (
        instance.state is InstanceState.RUNNING
        and job.ends_at is not None
        and job.ends_at - now <= replace_before_end
    )
    return replace(instance, state=InstanceState.EXITED) if leaving else instance


class BatchBackend:
    """Submits, lists and cancels one deployment's worker jobs through a :class:`Dialect`.

    Example (inside a running event loop)::

        from dask_deploy.backends import slurm

        settings = BatchSettings("dask", Path("worker-job.sh"), "dask-worker", ())
        backend = BatchBackend(slurm, settings)
        await backend.scale_up(2)  # two sbatch
        await backend.instances()  # [Instance("4711", PENDING, ...), Instance("4712", ...)]
    """

    def __init__(
        self,
        dialect: Dialect,
        settings: BatchSettings,
        *,
        clock: Callable[[], float] = time.time,
        runner: Runner = run_command,
    ) -> None:
        self.dialect = dialect
        self.settings = settings
        self.clock = clock
        self.runner = runner
        self._listing: dict[str, BatchJob] | None = None
        #: Jobs this backend cancelled: exited to the loop even while the batch system still
        #: lists them running (terminating, up to LSF's JOB_TERMINATE_INTERVAL or SLURM's
        #: KillWait), so a cancelled worker never reappears as a live instance.
        self._cancelled: set[str] = set()
        self._listed_at = 0.0

    async def _run(self, command: Command) -> str:
        return await self.runner(command, self.settings.command_timeout)

    async def jobs(self) -> list[BatchJob]:
        """This deployment's jobs, with their expected end: listed at most once per
        ``status_interval``, and between listings as this backend's own actions left them."""
        now = self.clock()
        if self._listing is None or now - self._listed_at >= self.settings.status_interval:
            stdout = await self._run(self.dialect.status_command(self.settings))
            jobs = self.dialect.parse_status(stdout, self.settings)
            listed = {job.instance.name for job in jobs}
            self._cancelled &= listed  # a job no longer listed needs no remembering
            jobs = [
                _as_exited(job) if job.instance.name in self._cancelled else job for job in jobs
            ]
            self._listing, self._listed_at = {job.instance.name: job for job in jobs}, now
        return list(self._listing.values())

    async def instances(self) -> list[Instance]:
        now, lead = self.clock(), self.settings.replace_before_end
        return [as_seen_by_the_loop(job, now, lead) for job in await self.jobs()]

    async def scale_up(self, n: int) -> None:
        wanted = n - count_requested(await self.instances())
        if self.settings.max_held is not None:
            held = count_requested([job.instance for job in await self.jobs()])
            wanted = min(wanted, self.settings.max_held - held)
        for _ in range(wanted):
            stdout = await self._run(self.dialect.submit_command(self.settings))
            job_id = self.dialect.parse_job_id(stdout)
            if self._listing is not None:
                pending = Instance(job_id, InstanceState.PENDING, self.clock())
                self._listing[job_id] = BatchJob(pending, None)

    async def scale_down(self, names: Collection[str]) -> None:
        jobs = await self.jobs()
        doomed = {j.instance.name for j in jobs if _lives(j)} & set(names)
        if not doomed:
            return
        try:
            await self._run(self.dialect.cancel_command(self.settings, doomed))
        except BatchCommandError:
            # A job may end by itself between the listing and the cancel (its lifetime, its
            # walltime, a cancel from outside or a moment ago), and most batch systems refuse
            # to cancel a finished job (LSF: "Job has already finished", exit 255). The cancel
            # did its work if none of these jobs still lives in a fresh listing.
            self._listing = None
            if doomed & {j.instance.name for j in await self.jobs() if _lives(j)}:
                raise
        self._cancelled |= doomed
        if self._listing is not None:
            for name in doomed & self._listing.keys():
                self._listing[name] = _as_exited(self._listing[name])

    def leaving(self) -> Mapping[str, float]:
        """Job id -> when it must be retired at the latest (its end - ``retire_before_end``),
        for every running job of the last listing within ``replace_before_end`` of its end."""
        now, settings = self.clock(), self.settings
        return {
            name: job.ends_at - settings.retire_before_end
            for name, job in (self._listing or {}).items()
            if job.instance.state is InstanceState.RUNNING
            and job.ends_at is not None
            and job.ends_at - now <= settings.replace_before_end
        }

    async def close(self) -> None:
        return None


def _as_exited(job: BatchJob) -> BatchJob:
    exited = replace(job.instance, state=InstanceState.EXITED)
    return replace(job, instance=exited, ends_at=None, reason=None)


def _lives(job: BatchJob) -> bool:
    return job.instance.state is not InstanceState.EXITED


def create_backend(dialect_module: str) -> BackendFactory:
    """The backend factory of a dialect module: a :class:`BatchBackend` over that module.

    A dialect registers with ``create = create_backend(__name__)``; the module is imported when
    the factory is called, so the line can sit in the module it names.
    """

    def create(context: BackendContext) -> Backend:
        dialect: Dialect = importlib.import_module(dialect_module)
        return BatchBackend(dialect, load_settings(context))

    create.__qualname__ = create.__name__ = f"create_backend({dialect_module!r})"
    return create


def _is_a_backend(backend: BatchBackend) -> tuple[Backend, HandsOverAtWalltime]:
    return backend, backend  # mypy checks that BatchBackend implements the protocols


__all__ = [
    "DEFAULT_COMMAND_TIMEOUT",
    "DEFAULT_STATUS_INTERVAL",
    "BatchBackend",
    "BatchCommandError",
    "BatchJob",
    "BatchSettings",
    "Command",
    "Dialect",
    "HandsOverAtWalltime",
    "Runner",
    "as_seen_by_the_loop",
    "create_backend",
    "current_user",
    "load_settings",
    "run_command",
]
