"""Command: three user-supplied commands start, stop and list the workers.

For a resource manager nobody packages (Nomad, YARN, a cloud CLI, a site's own wrapper): the
user writes three short scripts, and the scaler keeps its safe, adaptive behaviour.

Options (``backend.options`` in the scaler configuration)::

    start: [./worker-start.sh]   # required: gets one instance name as its last argument;
                                 #   prints nothing or an id (logged); exit 0 when started
    stop: [./worker-stop.sh]     # required: gets one or more names; exit 0 when they are gone
    list: [./worker-list.sh]     # required: prints one "<name> <state>" line per instance,
                                 #   state one of pending, running, exited
    environment: {}              # optional: more environment variables for the three commands
    start_timeout: 60            # optional: seconds `start` may take (then it is killed)
    stop_timeout: 60             # optional: seconds `stop` may take
    list_timeout: 30             # optional: seconds `list` may take
    working_directory: null      # optional: where the commands run; null: the scaler's

Each command is an argument list run without a shell, with ``DASK_DEPLOY_DEPLOYMENT`` and
``DASK_DEPLOY_SCHEDULER_ADDRESS`` in its environment. Instances are named
``<deployment>-worker-<n>`` (the lowest free ``n``); the worker must register with the
scheduler under that name (``dask worker --name "$1"``). Lines of ``list`` for names that
are not this deployment's are ignored, so one list command may serve several deployments.

A ``start`` that fails or times out is logged in one line naming the command and the
instance, and the scaler carries on (the next tick asks again). A failing ``list`` or
``stop`` fails the tick, which the loop retries. The argument lists are built by pure
functions; ``CommandRunner`` is the one place that runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import signal
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from .._errors import SettingsError
from ..contract import Backend, BackendContext, Instance, InstanceState, count_requested
from ..options import BACKEND_OPTIONS, reject_unknown

logger = logging.getLogger("dask_deploy.backends.command")

_COMMANDS = ("start", "stop", "list")
_TIMEOUTS = {"start_timeout": 60.0, "stop_timeout": 60.0, "list_timeout": 30.0}
_KNOWN = {*_COMMANDS, *_TIMEOUTS, "environment", "working_directory"}
STATES = {state.value: state for state in InstanceState}


@dataclass(frozen=True)
class CommandSettings:
    """The backend's options, validated once."""

    deployment: str
    scheduler_address: str
    start: tuple[str, ...]
    stop: tuple[str, ...]
    list: tuple[str, ...]
    environment: Mapping[str, str] = field(default_factory=dict)
    start_timeout: float = 60.0
    stop_timeout: float = 60.0
    list_timeout: float = 30.0
    working_directory: str | None = None


def instance_name(deployment: str, index: int) -> str:
    """The name of instance ``index``; the worker registers under it.

    >>> instance_name("dask", 2)
    'dask-worker-2'
    """
    return f"{deployment}-worker-{index}"


def free_indices(deployment: str, taken: Collection[str], count: int) -> list[int]:
    """The ``count`` lowest indices whose name is not in ``taken``.

    >>> free_indices("d", ["d-worker-0", "d-worker-2"], 2)
    [1, 3]
    """
    found: list[int] = []
    index = 0
    while len(found) < count:
        if instance_name(deployment, index) not in taken:
            found.append(index)
        index += 1
    return found


def command_environment(settings: CommandSettings) -> dict[str, str]:
    """The variables every command gets on top of the scaler's environment."""
    return {
        **settings.environment,
        "DASK_DEPLOY_DEPLOYMENT": settings.deployment,
        "DASK_DEPLOY_SCHEDULER_ADDRESS": settings.scheduler_address,
    }


class ListError(Exception):
    """``list`` printed a line that is not ``<name> <state>``."""


def parse_list_output(
    deployment: str, text: str, command: Sequence[str]
) -> dict[str, InstanceState]:
    """Name -> state of this deployment's instances in the output of ``list``.

    >>> parse_list_output("d", "d-worker-0 running\\nother-worker-1 exited\\n\\n", ["ls"])
    {'d-worker-0': <InstanceState.RUNNING: 'running'>}
    """
    pattern = re.compile(rf"^{re.escape(deployment)}-worker-\d+$")
    found: dict[str, InstanceState] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in STATES:
            raise ListError(
                f"`{shlex.join(command)}` line {number}: got {line!r}, expected "
                f"'<name> <state>' with state one of {', '.join(STATES)}"
            )
        if pattern.match(fields[0]):
            found[fields[0]] = STATES[fields[1]]
    return found


class CommandFailed(Exception):
    """A command exited non-zero or ran past its timeout."""


class CommandRunner:
    """Runs one command with its environment, bounded by a timeout; returns its output."""

    def __init__(self, settings: CommandSettings) -> None:
        self.settings = settings
        self.environment = {**os.environ, **command_environment(settings)}

    async def run(self, argv: Sequence[str], timeout: float) -> str:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.environment,
                cwd=self.settings.working_directory,
                start_new_session=True,  # a timeout kills the command and all it started
            )
        except OSError as error:
            raise CommandFailed(f"`{shlex.join(argv)}` could not run: {error}") from None
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            raise CommandFailed(f"`{shlex.join(argv)}` timed out after {timeout:g}s") from None
        if process.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            said = f": {lines[-1]}" if lines else ""
            raise CommandFailed(f"`{shlex.join(argv)}` exited {process.returncode}{said}")
        return out.decode(errors="replace")


class CommandBackend:
    """Starts, lists and stops one deployment's workers with the user's commands."""

    def __init__(self, settings: CommandSettings, runner: CommandRunner) -> None:
        self.settings = settings
        self.runner = runner
        #: When each name was first started or seen: ``list`` reports no request time.
        self._requested_at: dict[str, float] = {}
        #: The last start failure, the worker's name taken out: a start failing alike on
        #: every tick (a quota, a broken script) is logged once, until it changes or succeeds.
        self._start_failure: str | None = None

    async def _listed(self) -> dict[str, InstanceState]:
        text = await self.runner.run(self.settings.list, self.settings.list_timeout)
        return parse_list_output(self.settings.deployment, text, self.settings.list)

    async def instances(self) -> list[Instance]:
        listed = await self._listed()
        now = time.time()
        self._requested_at = {n: self._requested_at.get(n, now) for n in listed}
        return [Instance(n, s, self._requested_at[n]) for n, s in sorted(listed.items())]

    async def scale_up(self, n: int) -> None:
        listed = await self._listed()
        current = [Instance(name, state, 0.0) for name, state in listed.items()]
        missing = n - count_requested(current)
        if missing <= 0:
            return
        for index in free_indices(self.settings.deployment, listed, missing):
            name = instance_name(self.settings.deployment, index)
            self._requested_at[name] = time.time()
            try:
                said = await self.runner.run(
                    [*self.settings.start, name], self.settings.start_timeout
                )
            except CommandFailed as error:
                failure = str(error).replace(name, "{name}")
                if failure != self._start_failure:
                    logger.warning("starting %s failed: %s", name, error)
                self._start_failure = failure
                return  # the rest would most likely fail alike; the next tick asks again
            self._start_failure = None
            printed = said.strip().splitlines()
            logger.info("started %s%s", name, f" (id {printed[-1]})" if printed else "")

    async def scale_down(self, names: Collection[str]) -> None:
        known = await self._listed()
        targets = sorted(set(names) & set(known))
        if targets:
            await self.runner.run([*self.settings.stop, *targets], self.settings.stop_timeout)

    async def close(self) -> None:
        return None


def _argv(options: Mapping[str, object], key: str) -> tuple[str, ...]:
    value = options.get(key)
    if isinstance(value, str) and value.strip():
        value = shlex.split(value)
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise SettingsError(
            f"backend.options.{key}", value, "a command: a list of arguments or a string"
        )
    return tuple(value)


def load_settings(context: BackendContext) -> CommandSettings:
    """Validate ``backend.options``; raise :class:`SettingsError` naming the bad key."""
    options = dict(context.options)
    reject_unknown(options, _KNOWN, prefix=BACKEND_OPTIONS)
    timeouts = {}
    for key, default in _TIMEOUTS.items():
        value = options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise SettingsError(f"backend.options.{key}", value, "a number of seconds > 0")
        timeouts[key] = float(value)
    environment = options.get("environment", {})
    if not isinstance(environment, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in environment.items()
    ):
        raise SettingsError("backend.options.environment", environment, "a mapping of strings")
    directory = options.get("working_directory")
    if directory is not None and (not isinstance(directory, str) or not directory):
        raise SettingsError("backend.options.working_directory", directory, "null or a folder")
    return CommandSettings(
        deployment=context.deployment,
        scheduler_address=context.scheduler_address,
        start=_argv(options, "start"),
        stop=_argv(options, "stop"),
        list=_argv(options, "list"),
        environment=dict(environment),
        working_directory=directory,
        **timeouts,
    )


def create(context: BackendContext) -> Backend:
    """Build the command backend from the scaler configuration's ``backend.options``."""
    settings = load_settings(context)
    return CommandBackend(settings, CommandRunner(settings))


__all__ = ["CommandBackend", "create"]
