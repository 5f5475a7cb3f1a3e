"""Workers as ``dask worker`` processes on this machine: the embedded default backend.

Each instance is one ``dask worker`` process group named ``<deployment>-<index>``
(the index never repeats within a state directory). Instances are found again by
reading process command lines: every worker gets ``--local-directory
<state_dir>/<name>``, so a restarted scaler re-adopts the workers it launched
before, and a scaler killed half-way through a scale-up leaves no orphan.

Options (``backend.options``):

``state_dir`` (default ``<tmp>/dask-deploy-<uid>/<deployment>``)
    Where records, logs and worker directories live; one folder per deployment.
``threads`` (default 1)
    ``--nthreads`` of each worker.
``memory_limit`` (default ``"1GiB"``)
    ``--memory-limit`` of each worker.
``death_timeout`` (default 60)
    Seconds a worker keeps trying to reach a lost scheduler before it exits, so workers
    never outlive their scheduler (and its scaler) as orphans.
``worker_args`` (default ``[]``)
    Extra arguments for ``dask worker`` (for example ``--tls-ca-file ...``).
``python`` (default: the scaler's own interpreter)
    The interpreter that runs ``-m distributed.cli.dask_worker``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._errors import SettingsError
from ..contract import BackendContext, Instance, InstanceState, count_requested
from ..options import BACKEND_OPTIONS, reject_unknown

_KNOWN = {"death_timeout", "memory_limit", "python", "state_dir", "threads", "worker_args"}


@dataclass(frozen=True)
class LocalOptions:
    """Validated options of the local backend."""

    state_dir: Path
    threads: int = 1
    memory_limit: str = "1GiB"
    death_timeout: float = 60.0
    worker_args: tuple[str, ...] = ()
    python: str = field(default_factory=lambda: sys.executable)


#: ``dask worker`` arguments loading :mod:`dask_deploy.worker_preload` into nanny and worker.
HANDOVER_PRELOADS = (
    "--preload-nanny",
    "dask_deploy.worker_preload",
    "--preload",
    "dask_deploy.worker_preload",
)


def worker_command(options: LocalOptions, scheduler_address: str, name: str) -> list[str]:
    """The command line of one worker; its ``--local-directory`` marks it as ours.

    >>> worker_command(LocalOptions(Path("/s"), python="py"), "tcp://127.0.0.1:8786", "d-0")[:5]
    ['py', '-m', 'distributed.cli.dask_worker', 'tcp://127.0.0.1:8786', '--name']
    """
    return [
        options.python,
        "-m",
        "distributed.cli.dask_worker",
        scheduler_address,
        "--name",
        name,
        "--nthreads",
        str(options.threads),
        "--memory-limit",
        options.memory_limit,
        "--local-directory",
        str(options.state_dir / name),
        "--host",
        "127.0.0.1",
        "--no-dashboard",
        "--death-timeout",
        f"{options.death_timeout:g}",
        # On an outside SIGTERM the worker hands its data over through the scheduler first.
        *HANDOVER_PRELOADS,
        *options.worker_args,
    ]


def parse_worker_cmdline(argv: Sequence[str], state_dir: Path) -> str | None:
    """The worker name if ``argv`` is one of our workers (its directory is in ``state_dir``).

    >>> parse_worker_cmdline(["py", "--name", "d-0", "--local-directory", "/s/d-0"], Path("/s"))
    'd-0'
    >>> parse_worker_cmdline(["py", "--name", "d-0", "--local-directory", "/t/d-0"], Path("/s"))
    """
    try:
        directory = Path(argv[argv.index("--local-directory") + 1])
        name = argv[argv.index("--name") + 1]
    except (ValueError, IndexError):
        return None
    return name if directory.parent == state_dir and directory.name == name else None


def _index(name: str, deployment: str) -> int:
    suffix = name.removeprefix(f"{deployment}-")
    return int(suffix) if suffix.isdigit() else -1


def running_workers(state_dir: Path) -> dict[str, int]:
    """Worker name -> pid of every live process whose command line marks it as ours."""
    found: dict[str, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue  # the process ended while we looked
        if not raw:
            continue  # zombie or kernel thread
        name = parse_worker_cmdline(raw.decode(errors="replace").split("\0"), state_dir)
        if name is not None:
            found[name] = int(entry.name)
    return found


class LocalBackend:
    """See the module docstring."""

    def __init__(self, deployment: str, scheduler_address: str, options: LocalOptions) -> None:
        self.deployment = deployment
        self.scheduler_address = scheduler_address
        self.options = options
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        options.state_dir.mkdir(parents=True, exist_ok=True)

    def _record(self, name: str) -> Path:
        return self.options.state_dir / f"{name}.json"

    def _live_workers(self) -> dict[str, int]:
        """Worker name -> pid: what ``/proc`` shows, and every child we launched that lives.

        ``Popen`` returns as soon as ``exec`` has begun, and for a moment after that (longer on
        a loaded machine) the kernel shows the new process with an empty command line. A
        listing in that moment would call the worker exited, forget its record and let the
        next ``scale_up`` launch a duplicate, so our own living children always count.
        """
        for name, child in list(self._children.items()):
            if child.poll() is not None:  # reap exited children
                # pop: two listings in two threads may reap the same child
                self._children.pop(name, None)
        found = running_workers(self.options.state_dir)
        for name, child in list(self._children.items()):
            found.setdefault(name, child.pid)
        return found

    def _snapshot(self) -> list[Instance]:
        running = self._live_workers()
        result = []
        for name, pid in sorted(running.items()):
            result.append(Instance(name, InstanceState.RUNNING, self._requested_at(name, pid)))
        for record in sorted(self.options.state_dir.glob("*.json")):
            name = record.stem
            if name not in running:
                # Reported once, then forgotten: the process is gone.
                result.append(Instance(name, InstanceState.EXITED, self._requested_at(name, 0)))
                record.unlink(missing_ok=True)
                shutil.rmtree(self.options.state_dir / name, ignore_errors=True)
        return result

    def _requested_at(self, name: str, pid: int) -> float:
        try:
            return float(json.loads(self._record(name).read_text())["requested_at"])
        except (OSError, ValueError, KeyError):
            return time.time() if pid == 0 else os.stat(f"/proc/{pid}").st_mtime

    def _next_names(self, count: int, taken: Collection[str]) -> list[str]:
        counter = self.options.state_dir / "next-index"
        try:
            start = int(counter.read_text())
        except (OSError, ValueError):
            start = 0
        start = max([start, *(_index(n, self.deployment) + 1 for n in taken)])
        counter.write_text(str(start + count))
        return [f"{self.deployment}-{start + i}" for i in range(count)]

    def _launch(self, name: str) -> None:
        # The record goes first: if we die before the process starts, the record
        # is reported exited and forgotten; after it starts, /proc finds it.
        self._record(name).write_text(json.dumps({"requested_at": time.time()}))
        (self.options.state_dir / name).mkdir(exist_ok=True)
        log = (self.options.state_dir / f"{name}.log").open("ab")
        with log:
            self._children[name] = subprocess.Popen(
                worker_command(self.options, self.scheduler_address, name),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def _scale_up(self, n: int) -> None:
        instances = self._snapshot()
        missing = n - count_requested(instances)
        if missing > 0:
            for name in self._next_names(missing, [i.name for i in instances]):
                self._launch(name)

    def _scale_down(self, names: Collection[str]) -> None:
        running = self._live_workers()
        targets = {name: running[name] for name in names if name in running}
        for pid in targets.values():
            _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            alive = self._live_workers()
            if not any(name in alive for name in targets):
                break
            time.sleep(0.1)
        else:
            # Only the groups still there: an ended worker's id may be another process's by now.
            for name, pid in targets.items():
                if name in alive:
                    _signal_group(pid, signal.SIGKILL)
        for name in names:
            if name in self._children:
                self._children.pop(name).wait(timeout=5)
            self._record(name).unlink(missing_ok=True)
            shutil.rmtree(self.options.state_dir / name, ignore_errors=True)

    async def scale_up(self, n: int) -> None:
        await asyncio.to_thread(self._scale_up, n)

    async def scale_down(self, names: Collection[str]) -> None:
        await asyncio.to_thread(self._scale_down, list(names))

    async def instances(self) -> list[Instance]:
        return await asyncio.to_thread(self._snapshot)

    async def close(self) -> None:
        for child in list(self._children.values()):
            child.poll()


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


def parse_options(deployment: str, options: Mapping[str, object]) -> LocalOptions:
    """Validate ``backend.options`` of the local backend."""
    reject_unknown(options, _KNOWN, prefix=BACKEND_OPTIONS)
    default_dir = Path(tempfile.gettempdir(), f"dask-deploy-{os.getuid()}", deployment)
    state_dir = options.get("state_dir", str(default_dir))
    threads = options.get("threads", 1)
    memory_limit = options.get("memory_limit", "1GiB")
    death_timeout = options.get("death_timeout", 60)
    worker_args = options.get("worker_args", [])
    python = options.get("python", sys.executable)
    if not isinstance(state_dir, str) or not state_dir:
        raise SettingsError("backend.options.state_dir", state_dir, "a directory path")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise SettingsError("backend.options.threads", threads, "an integer >= 1")
    if not isinstance(memory_limit, str | int) or isinstance(memory_limit, bool):
        raise SettingsError("backend.options.memory_limit", memory_limit, "a size like '1GiB'")
    if (
        isinstance(death_timeout, bool)
        or not isinstance(death_timeout, int | float)
        or death_timeout <= 0
    ):
        raise SettingsError("backend.options.death_timeout", death_timeout, "seconds > 0")
    if not isinstance(worker_args, list) or not all(isinstance(a, str) for a in worker_args):
        raise SettingsError("backend.options.worker_args", worker_args, "a list of strings")
    if not isinstance(python, str) or not python:
        raise SettingsError("backend.options.python", python, "an interpreter path")
    return LocalOptions(
        state_dir=Path(state_dir).absolute(),
        threads=threads,
        memory_limit=str(memory_limit),
        death_timeout=float(death_timeout),
        worker_args=tuple(str(a) for a in worker_args),
        python=python,
    )


def create(context: BackendContext) -> LocalBackend:
    """A local backend launching workers of ``context.deployment`` against its scheduler."""
    return LocalBackend(
        context.deployment,
        context.scheduler_address,
        parse_options(context.deployment, context.options),
    )
