"""A deployment's life: bring it up, find it again by name, read its status, take it down.

Each deployment has a folder ``<state root>/<name>/`` holding ``deployment.json`` (what
was launched and where the scheduler is), the files it was launched from and the logs of
what runs on this machine. The state root is ``$DASK_DEPLOY_STATE_DIR``, else
``$XDG_STATE_HOME/dask-deploy``, else ``~/.local/state/dask-deploy``. The scheduler and
its scaler outlive the process that launched them: another process (``dask-deploy status``,
``DeployCluster.from_name``) finds them through that folder.

A :class:`Launcher` per backend starts the scheduler and its scaler through the resource
manager and stops them again; everything else here is the same for every backend.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from ._errors import SettingsError, UserInputError
from ._extras import require_extra
from ._launchers import LAUNCHERS, MANIFESTS
from .backends import Backend, BackendContext, Instance, InstanceState, load_backend_factory
from .backends.local import parse_options as parse_local_options
from .channel import (
    build_policy,
    new_request_id,
    policy_as_dict,
    request_key,
    status_key,
    validate_request,
)
from .config import ScalerConfig, parse_config
from .render import RECORD_FILE as RENDER_RECORD
from .values import apply_set, deep_merge, load_values_file, parse_set

STATE_ENV = "DASK_DEPLOY_STATE_DIR"
RECORD_FILE = "deployment.json"
SCALER_CONFIG_FILE = "scaler-config.yaml"
SCALER_CONFIGMAP_FILE = "scaler-configmap.yaml"
#: Seconds `down` waits for the scaler to retire every worker before stopping it.
RETIRE_TIMEOUT = 120.0
logger = logging.getLogger("dask_deploy.lifecycle")
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


class LaunchError(UserInputError):
    """A deployment did not come up (exit 1); the message carries the relevant log tail."""

    exit_code = 1


def state_root(environ: Mapping[str, str] | None = None) -> Path:
    """Where deployment folders live (see the module docstring)."""
    environ = os.environ if environ is None else environ
    if environ.get(STATE_ENV):
        return Path(environ[STATE_ENV])
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dask-deploy"


def check_name(name: str) -> str:
    """A deployment name: it names resource-manager objects and workers, so it is a DNS label."""
    if not (isinstance(name, str) and len(name) <= 40 and _NAME.fullmatch(name)):
        raise SettingsError(
            "name", name, "lower-case letters, digits and '-', at most 40 characters"
        )
    return name


def new_name() -> str:
    """A fresh deployment name, ``dask-`` and 8 hex digits."""
    return f"dask-{uuid.uuid4().hex[:8]}"


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, or a note that there is none."""
    if not path.is_file():
        return f"(no log at {path})"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(f"  | {line}" for line in text)


@dataclass
class DeploymentRecord:
    """What ``deployment.json`` holds."""

    name: str
    backend: str
    folder: str
    created_at: float
    scheduler_address: str | None = None
    #: backend-specific handles: process ids and start times, job ids, object names
    handles: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.folder)

    def save(self) -> None:
        target = self.path / RECORD_FILE
        staging = target.with_suffix(".json.tmp")
        staging.write_text(json.dumps(asdict(self), indent=2) + "\n")
        staging.replace(target)

    @classmethod
    def load(cls, name: str, root: Path | None = None) -> DeploymentRecord:
        """The record of the deployment ``name``; one clear line when there is none."""
        check_name(name)
        root = state_root() if root is None else root
        path = root / name / RECORD_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            known = ", ".join(list_names(root)) or "none"
            raise SettingsError(
                "name", name, f"a deployment started on this machine (known: {known})"
            ) from None
        return cls(**data)

    def scaler_config(self) -> ScalerConfig:
        """The scaler configuration the deployment was launched with."""
        path = self.path / MANIFESTS / SCALER_CONFIG_FILE
        if not path.is_file() and (self.path / MANIFESTS / SCALER_CONFIGMAP_FILE).is_file():
            # Kubernetes mounts it from a ConfigMap.
            configmap = yaml.safe_load((self.path / MANIFESTS / SCALER_CONFIGMAP_FILE).read_text())
            return parse_config(yaml.safe_load(configmap["data"][SCALER_CONFIG_FILE]))
        return parse_config(yaml.safe_load(path.read_text()))


def list_names(root: Path | None = None) -> list[str]:
    """Names of the deployments with a record under ``root``."""
    root = state_root() if root is None else root
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob(f"*/{RECORD_FILE}"))


class Launcher(Protocol):
    """Starts and stops one backend's scheduler and scaler through its resource manager."""

    def manifests(self) -> dict[str, str]:
        """The files the deployment is launched from, ``{name: text}``."""
        ...

    def launch(self, record: DeploymentRecord, timeout: float) -> str:
        """Start the scheduler and its scaler; the scheduler address once it listens."""
        ...

    def stop(self, record: DeploymentRecord) -> None:
        """Stop the scaler, then the scheduler, and whatever else was launched."""
        ...


# --------------------------------------------------------------------------- local

#: Commented defaults of a local deployment (``dask-deploy show values local``); the keys
#: follow the ``scaler`` and ``worker`` sections of the templated backends' values.yaml.
LOCAL_VALUES_YAML = """\
# Defaults of `dask-deploy up local` and DeployCluster("local"): a scheduler, its scaler and
# `dask worker` processes on this machine, all on 127.0.0.1.
scaler:
  # Policy that decides the worker count: adaptive (follows the load) or fixed.
  policy: adaptive
  # Fewest workers to keep.
  minimum: 0
  # Most workers to run at once.
  maximum: 4
  # Seconds between scaler ticks.
  interval: 1.0
  # Seconds a worker may take to connect before it is replaced.
  startup_timeout: 120
  # The policy's own options (docs/scaler-config.md), e.g. {scale_down_window: 30}.
  options: {}
  # Port of the scaler's Prometheus metrics on 127.0.0.1; 0 picks a free one (the scaler's
  # log names it); null turns them off.
  metrics_port: 0
worker:
  # Threads of each worker.
  threads: 1
  # Memory limit of each worker.
  memory_limit: 1GiB
  # Seconds a worker keeps trying to reach a lost scheduler before it exits.
  death_timeout: 60
"""
LOCAL_DEFAULTS: dict[str, Any] = yaml.safe_load(LOCAL_VALUES_YAML)


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (field 22 of /proc/PID/stat), to tell a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def alive(handle: Mapping[str, Any]) -> bool:
    """Does the process of ``{"pid": ..., "start": ...}`` still run (and is it still ours)?"""
    start = _process_start(int(handle["pid"]))
    if start is None or start != handle.get("start"):
        return False
    state = Path(f"/proc/{handle['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def stop_process(handle: Mapping[str, Any], grace: float = 30.0) -> None:
    """SIGTERM the process group of ``handle``, SIGKILL it after ``grace`` seconds."""
    if not alive(handle):
        return
    pid = int(handle["pid"])
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            child = _CHILDREN.get(pid)
            if child is not None and child.poll() is not None:
                del _CHILDREN[pid]  # ours, and now reaped
                return
            if child is None and not alive(handle):
                return
            time.sleep(0.1)


#: Processes this process started, by pid: kept so that they are reaped when stopped here
#: (a deployment usually outlives its launcher, and is then stopped by another process).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _start(argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Start ``argv`` detached (its own session, so it outlives us); its handle."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    _CHILDREN[process.pid] = process
    return {"pid": process.pid, "start": _process_start(process.pid)}


def local_scaler_config(name: str, values: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """The scaler configuration of a local deployment (as ``scaler.yaml`` data)."""
    scaler, worker = values["scaler"], values["worker"]
    return {
        "deployment": name,
        "scheduler": {"scheduler_file": str(folder / "scheduler.json")},
        "policy": {
            "name": scaler["policy"],
            "minimum": scaler["minimum"],
            "maximum": scaler["maximum"],
            "options": scaler["options"],
        },
        "loop": {
            "interval": scaler["interval"],
            "startup_timeout": scaler["startup_timeout"],
            # `down` retires the workers first; this is the safe path if it could not.
            "cleanup_on_exit": True,
        },
        "metrics": None
        if scaler["metrics_port"] is None
        else {"host": "127.0.0.1", "port": scaler["metrics_port"]},
        "backend": {
            "name": "local",
            "options": {
                "state_dir": str(folder / "workers"),
                "threads": worker["threads"],
                "memory_limit": worker["memory_limit"],
                "death_timeout": worker["death_timeout"],
            },
        },
    }


#: scaler.yaml key -> the local values key that sets it (longest prefixes first).
_LOCAL_KEYS = (
    ("policy.name", "scaler.policy"),
    ("policy.", "scaler."),
    ("loop.", "scaler."),
    ("metrics.port", "scaler.metrics_port"),
    ("backend.options.", "worker."),
)


def _local_key(key: str) -> str:
    for prefix, replacement in _LOCAL_KEYS:
        if key.startswith(prefix):
            return replacement + key.removeprefix(prefix)
    return key


class LocalLauncher:
    """A ``dask scheduler`` and ``dask-deploy scale`` as processes on this machine."""

    def __init__(self, name: str, values: Mapping[str, Any], folder: Path) -> None:
        self.name = name
        self.folder = folder
        self.config = local_scaler_config(name, values, folder)
        # Everything is checked before anything starts, and named as the user wrote it.
        try:
            parsed = parse_config(self.config)
            build_policy(parsed.policy, parsed.loop.startup_timeout)
            parse_local_options(name, parsed.backend.options)
        except SettingsError as error:
            raise SettingsError(_local_key(error.key), error.value, error.allowed) from None

    def manifests(self) -> dict[str, str]:
        header = f"# Scaler configuration of the local deployment {self.name!r}.\n"
        return {SCALER_CONFIG_FILE: header + yaml.safe_dump(self.config, sort_keys=False)}

    def launch(self, record: DeploymentRecord, timeout: float) -> str:
        folder = record.path
        scheduler_file = folder / "scheduler.json"
        scheduler_log = folder / "scheduler.log"
        (folder / MANIFESTS).mkdir(exist_ok=True)
        for name, text in self.manifests().items():
            (folder / MANIFESTS / name).write_text(text)
        record.handles["scheduler"] = _start(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--dashboard-address",
                "127.0.0.1:0",
                "--scheduler-file",
                str(scheduler_file),
                "--preload",
                "dask_deploy.scheduler_preload",
            ],
            scheduler_log,
        )
        record.save()
        deadline = time.monotonic() + timeout
        while True:
            try:
                address = str(json.loads(scheduler_file.read_text())["address"])
                break
            except (OSError, ValueError, KeyError):
                pass
            if not alive(record.handles["scheduler"]) or time.monotonic() > deadline:
                raise LaunchError(
                    f"the scheduler of {self.name!r} did not write its address to "
                    f"{scheduler_file} within {timeout:g}s; scheduler log:\n{tail(scheduler_log)}"
                )
            time.sleep(0.1)
        record.scheduler_address = address
        record.handles["scaler"] = _start(
            [
                sys.executable,
                "-m",
                "dask_deploy.cli",
                "scale",
                "--config",
                str(folder / MANIFESTS / SCALER_CONFIG_FILE),
            ],
            folder / "scaler.log",
        )
        record.save()
        return address

    @staticmethod
    def stop(record: DeploymentRecord) -> None:
        for part in ("scaler", "scheduler"):
            handle = record.handles.get(part)
            if handle is not None:
                stop_process(handle)
        # The scaler retired its workers when it stopped (cleanup_on_exit). Any left now has
        # no scheduler, so it holds nothing; it would exit after its death_timeout anyway.
        # Stop it now, so that `down` leaves no process behind.
        if (record.path / MANIFESTS / SCALER_CONFIG_FILE).is_file():
            asyncio.run(remove_instances(record))


def local_values(
    values: Mapping[str, Any] | str | os.PathLike[str] | None, sets: Sequence[str]
) -> dict[str, Any]:
    """The local backend's defaults, then a values mapping or file, then ``--set``."""
    merged = deep_merge(LOCAL_DEFAULTS, {})
    if isinstance(values, Mapping):
        merged = deep_merge(merged, values)
    elif values is not None:
        merged = deep_merge(merged, load_values_file(values))
    for expression in sets:
        merged = apply_set(merged, parse_set(expression))
    for section in ("scaler", "worker"):
        for key in merged.get(section, {}):
            if key not in LOCAL_DEFAULTS[section]:
                allowed = ", ".join(sorted(LOCAL_DEFAULTS[section]))
                raise SettingsError(f"{section}.{key}", merged[section][key], f"one of {allowed}")
    for key in merged:
        if key not in LOCAL_DEFAULTS:
            raise SettingsError(key, merged[key], f"one of {', '.join(sorted(LOCAL_DEFAULTS))}")
    return merged


def make_launcher(
    backend: str,
    name: str,
    values: Mapping[str, Any] | str | os.PathLike[str] | None,
    sets: Sequence[str],
    folder: Path,
) -> Launcher:
    """The launcher of ``backend``, with the values checked (nothing is started yet)."""
    require_extra(backend)
    if backend == "local":
        return LocalLauncher(name, local_values(values, sets), folder)
    if backend in LAUNCHERS:
        return LAUNCHERS[backend](name, values, sets, folder)
    raise SettingsError("backend", backend, f"one of {', '.join(launchable())}")


def launchable() -> list[str]:
    """Backends ``up`` and ``DeployCluster`` can launch."""
    return sorted({"local", *LAUNCHERS})


def stopper(backend: str) -> Any:
    """The ``stop(record)`` of ``backend``'s launcher."""
    return LocalLauncher.stop if backend == "local" else LAUNCHERS[backend].stop


# --------------------------------------------------------------------------- lifecycle


def up(
    backend: str,
    values: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    sets: Sequence[str] = (),
    name: str | None = None,
    *,
    timeout: float = 120.0,
    root: Path | None = None,
) -> DeploymentRecord:
    """Launch a deployment and return its record once the scheduler has an address.

    On failure everything started so far is stopped again and the folder removed.
    """
    name = check_name(name) if name is not None else new_name()
    root = state_root() if root is None else root
    folder = root / name
    if (folder / RECORD_FILE).exists():
        raise SettingsError(
            "name", name, f"a name not in use (run `dask-deploy down {name}` first)"
        )
    launcher = make_launcher(backend, name, values, sets, folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = DeploymentRecord(
        name=name, backend=backend, folder=str(folder), created_at=time.time()
    )
    record.save()
    try:
        launcher.launch(record, timeout)
    except BaseException as failed:
        try:
            stopper(backend)(record)
        except Exception as cleanup:  # the launch's error is what the user must see
            failed.add_note(f"then stopping what was started failed too: {cleanup}")
        _forget(record)
        raise
    return record


def manifests_of(record: DeploymentRecord) -> dict[str, str]:
    """The files a deployment was launched from, as they are in its folder."""
    folder = record.path / MANIFESTS
    return {
        p.relative_to(folder).as_posix(): p.read_text()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != RENDER_RECORD
    }


def down(record: DeploymentRecord) -> None:
    """Stop everything of the deployment (after its workers were retired) and forget it."""
    stopper(record.backend)(record)
    _forget(record)


def _forget(record: DeploymentRecord) -> None:
    keep = record.path.parent / f".{record.name}.removed-{uuid.uuid4().hex[:6]}"
    try:
        record.path.rename(keep)
    except OSError:
        return
    shutil.rmtree(keep, ignore_errors=True)


def _backend_of(record: DeploymentRecord) -> Backend:
    config = record.scaler_config()
    # Relative paths in a rendered scaler configuration are against the job's working
    # directory (the scaler runs there); here they are made absolute against it.
    base = Path(record.handles.get("workdir") or record.path / MANIFESTS)
    options = {
        key: str(base / value)
        if isinstance(value, str) and not os.path.isabs(value) and (base / value).exists()
        else value
        for key, value in config.backend.options.items()
    }
    if record.backend in LAUNCHERS:
        options = LAUNCHERS[record.backend].backend_options_here(record, options)
    return load_backend_factory(config.backend.name)(
        BackendContext(
            deployment=config.deployment,
            scheduler_address=record.scheduler_address or "tcp://127.0.0.1:0",
            options=options,
        )
    )


async def resource_instances(record: DeploymentRecord) -> list[Instance]:
    """The instances the resource manager reports for the deployment."""
    backend = _backend_of(record)
    try:
        return await backend.instances()
    finally:
        await backend.close()


async def remove_instances(record: DeploymentRecord) -> None:
    """Remove every instance of a deployment whose scheduler is already gone."""
    backend = _backend_of(record)
    try:
        names = [i.name for i in await backend.instances() if i.state is not InstanceState.EXITED]
        if names:
            await backend.scale_down(names)
    finally:
        await backend.close()


# --------------------------------------------------------------------------- via the scheduler


def scheduler_rpc(record: DeploymentRecord) -> Any:
    """An RPC handle on the deployment's scheduler (close it with ``close_rpc()``)."""
    from distributed.core import rpc

    if record.scheduler_address is None:
        raise LaunchError(f"deployment {record.name!r} has no scheduler address yet")
    return rpc(record.scheduler_address, timeout=10)  # type: ignore[no-untyped-call]


async def published_status(comm: Any, name: str) -> dict[str, Any] | None:
    """What the scaler of ``name`` last published in the scheduler, if anything."""
    status = await comm.get_metadata(keys=status_key(name), default=None)
    return _plain(status) if isinstance(status, Mapping) else None


def _plain(value: Any) -> Any:
    """Tuples (as msgpack returns lists) back to lists, mappings to dicts."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


async def retire_all(comm: Any, name: str, timeout: float = RETIRE_TIMEOUT) -> bool:
    """Ask the scaler of ``name`` for no workers; wait until it holds none.

    This is the scaler's own safe path: it retires each worker through the scheduler
    before removing its instance. False when the scaler did not get there in time.
    """
    request_id = new_request_id()
    nothing = policy_as_dict(validate_request({"name": "fixed", "minimum": 0, "maximum": 0}))
    try:
        await comm.set_metadata(keys=request_key(name), value={"id": request_id, "policy": nothing})
    except OSError as error:
        logger.warning("could not ask the scaler to retire the workers: %r", error)
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = await published_status(comm, name)
        except OSError:
            return False
        if status and status.get("applied_request") == request_id and status["requested"] == 0:
            return True
        await asyncio.sleep(0.2)
    logger.warning(
        "the scaler of %s did not retire every worker within %gs; stopping it anyway "
        "(it retires the rest through the scheduler as it stops)",
        name,
        timeout,
    )
    return False


async def retire_and_stop(record: DeploymentRecord) -> None:
    """``dask-deploy down``: retire the workers through the scaler, then stop everything."""
    if record.scheduler_address is not None:
        comm = scheduler_rpc(record)
        try:
            await retire_all(comm, record.name)
        finally:
            await comm.close_rpc()
    await asyncio.to_thread(down, record)
