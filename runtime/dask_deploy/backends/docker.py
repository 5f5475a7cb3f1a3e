"""Docker: each worker is one container on the host network, named by the container name.

Options (``backend.options`` in the scaler configuration)::

    image: ghcr.io/dask-deploy/dask-deploy-worker:0.1.0   # required: the worker image
    worker_args: []            # optional: extra `dask worker` arguments, e.g. ["--nthreads", "2"]
    environment: {}            # optional: environment variables of every worker container
    volumes: []                # optional: bind mounts, "host:container[:ro]" (e.g. TLS files)
    base_url: null             # optional: the engine's address; default DOCKER_HOST or the socket
    stop_timeout: 30           # optional: seconds between SIGTERM and SIGKILL, on the scaler's
                               #   stop and as the container's StopTimeout (`docker stop`)
    request_timeout: 30        # optional: seconds any engine call may take (a stop: plus
                               #   stop_timeout); a hung engine fails the tick, which is retried
    memory_limit: null         # optional: e.g. "4GiB": the container's memory limit AND the
                               #   worker's --memory-limit, so Dask spills before the kernel kills
    cpus: null                 # optional: CPU limit of each container, e.g. 2.0
    user: "10001:10001"        # optional: uid:gid to run as (the image's user); null: the image's
    read_only: true            # optional: read-only root filesystem
    tmpfs: ["/tmp"]            # optional: writable tmpfs mounts on the read-only root
    scratch: /home/dask        # optional: an anonymous volume (on disk, not in memory, removed
                               #   with the container) that is Dask's --local-directory (spill);
                               #   null: Dask writes to /tmp
    no_new_privileges: true    # optional: security_opt no-new-privileges
    cap_drop: ["ALL"]          # optional: Linux capabilities to drop

Containers are named ``<deployment>-worker-<index>`` (the lowest free index) and run
``dask worker <scheduler> --name <container name>`` with ``network_mode: host``, so
``Instance.name`` is the container name the scheduler knows. Labels ``dask-deploy.deployment``
and ``dask-deploy.role=worker`` mark them; listing and removing filter on both, so the backend
never touches another deployment's containers. No image is ever pulled: a missing image is an
error from the engine.

Hardened by default: non-root, read-only root filesystem, no privilege escalation, no
capabilities; a worker writes only to its tmpfs and its scratch volume.

The container specification and the state mapping are pure functions; ``DockerRunner`` is the
one place that calls the Docker SDK, in a thread so the event loop keeps ticking.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._errors import SettingsError
from ..contract import Backend, BackendContext, Instance, InstanceState, count_requested
from ..options import BACKEND_OPTIONS, reject_unknown

DEPLOYMENT_LABEL = "dask-deploy.deployment"
ROLE_LABEL = "dask-deploy.role"
REQUESTED_AT_LABEL = "dask-deploy.requested-at"
#: Docker's container states; "created" has not started yet, anything unknown counts as
#: running so a state added by a later engine holds its container instead of duplicating it.
PENDING_STATES = frozenset({"created"})
EXITED_STATES = frozenset({"exited", "dead", "removing"})


@dataclass(frozen=True)
class Confinement:
    """What a worker container may do and use; the defaults are the hardened ones."""

    user: str | None = "10001:10001"
    read_only: bool = True
    tmpfs: tuple[str, ...] = ("/tmp",)
    scratch: str | None = "/home/dask"
    no_new_privileges: bool = True
    cap_drop: tuple[str, ...] = ("ALL",)
    #: Bytes; also the worker's --memory-limit.
    memory_limit: int | None = None
    cpus: float | None = None


@dataclass(frozen=True)
class DockerSettings:
    """The backend's options, validated once."""

    deployment: str
    scheduler_address: str
    image: str
    worker_args: tuple[str, ...]
    environment: Mapping[str, str]
    volumes: tuple[str, ...]
    base_url: str | None
    stop_timeout: int
    confinement: Confinement = field(default_factory=Confinement)
    request_timeout: float = 30.0


def load_settings(context: BackendContext) -> DockerSettings:
    """Validate ``backend.options``; raise :class:`SettingsError` naming the bad key."""
    options = dict(context.options)
    allowed = {"image", "worker_args", "environment", "volumes", "base_url", "stop_timeout"}
    allowed |= {"request_timeout"}
    allowed |= CONFINEMENT_OPTIONS
    reject_unknown(options, allowed, prefix=BACKEND_OPTIONS)
    image = options.get("image")
    if not isinstance(image, str) or not image.strip():
        raise SettingsError("backend.options.image", image, "an image reference, e.g. name:tag")
    worker_args = options.get("worker_args", [])
    if not isinstance(worker_args, list) or not all(isinstance(a, str) for a in worker_args):
        raise SettingsError("backend.options.worker_args", worker_args, "a list of strings")
    environment = options.get("environment", {})
    if not isinstance(environment, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in environment.items()
    ):
        raise SettingsError("backend.options.environment", environment, "a mapping of strings")
    volumes = options.get("volumes", [])
    if not isinstance(volumes, list) or not all(
        isinstance(v, str) and v.count(":") in (1, 2) for v in volumes
    ):
        raise SettingsError("backend.options.volumes", volumes, 'a list of "host:container[:ro]"')
    base_url = options.get("base_url")
    if base_url is not None and not isinstance(base_url, str):
        raise SettingsError(
            "backend.options.base_url", base_url, "null or unix:///... or tcp://..."
        )
    stop_timeout = options.get("stop_timeout", 30)
    if isinstance(stop_timeout, bool) or not isinstance(stop_timeout, int) or stop_timeout < 0:
        raise SettingsError("backend.options.stop_timeout", stop_timeout, "an integer >= 0")
    request_timeout = options.get("request_timeout", 30.0)
    if (
        isinstance(request_timeout, bool)
        or not isinstance(request_timeout, int | float)
        or request_timeout <= 0
    ):
        raise SettingsError("backend.options.request_timeout", request_timeout, "a number > 0")
    return DockerSettings(
        context.deployment,
        context.scheduler_address,
        image,
        tuple(worker_args),
        dict(environment),
        tuple(volumes),
        base_url,
        stop_timeout,
        load_confinement(options),
        float(request_timeout),
    )


CONFINEMENT_OPTIONS = {
    "user",
    "read_only",
    "tmpfs",
    "scratch",
    "no_new_privileges",
    "cap_drop",
    "memory_limit",
    "cpus",
}


def _paths(options: Mapping[str, Any], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = options.get(key, list(default))
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SettingsError(f"backend.options.{key}", value, "a list of strings")
    return tuple(value)


def load_confinement(options: Mapping[str, Any]) -> Confinement:
    """The hardening and resource options; absent ones keep the hardened defaults."""
    from dask.utils import parse_bytes

    defaults = Confinement()
    user = options.get("user", defaults.user)
    if user is not None and not (isinstance(user, str) and re.fullmatch(r"\w+(:\w+)?", user)):
        raise SettingsError("backend.options.user", user, 'null or "uid[:gid]"')
    for key in ("read_only", "no_new_privileges"):
        if not isinstance(options.get(key, True), bool):
            raise SettingsError(f"backend.options.{key}", options[key], "true or false")
    scratch = options.get("scratch", defaults.scratch)
    if scratch is not None and not (isinstance(scratch, str) and scratch.startswith("/")):
        raise SettingsError("backend.options.scratch", scratch, "null or an absolute path")
    memory = options.get("memory_limit")
    try:
        memory_limit = None if memory is None else int(parse_bytes(memory))
    except (TypeError, ValueError):
        memory_limit = -1
    if memory_limit is not None and memory_limit <= 0:
        raise SettingsError("backend.options.memory_limit", memory, 'null or bytes, e.g. "4GiB"')
    cpus = options.get("cpus")
    if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, int | float)):
        raise SettingsError("backend.options.cpus", cpus, "null or a number > 0")
    if cpus is not None and cpus <= 0:
        raise SettingsError("backend.options.cpus", cpus, "null or a number > 0")
    return Confinement(
        user=user,
        read_only=bool(options.get("read_only", defaults.read_only)),
        tmpfs=_paths(options, "tmpfs", defaults.tmpfs),
        scratch=scratch,
        no_new_privileges=bool(options.get("no_new_privileges", defaults.no_new_privileges)),
        cap_drop=_paths(options, "cap_drop", defaults.cap_drop),
        memory_limit=memory_limit,
        cpus=None if cpus is None else float(cpus),
    )


def container_name(deployment: str, index: int) -> str:
    """The name of worker ``index``; also its Dask worker name.

    >>> container_name("dask", 3)
    'dask-worker-3'
    """
    return f"{deployment}-worker-{index}"


def free_indices(deployment: str, taken_names: Collection[str], count: int) -> list[int]:
    """The ``count`` lowest indices whose container name no container holds.

    >>> free_indices("dask", ["dask-worker-0", "dask-worker-2"], 2)
    [1, 3]
    """
    pattern = re.compile(rf"^{re.escape(deployment)}-worker-(\d+)$")
    taken = {int(m.group(1)) for name in taken_names if (m := pattern.match(name))}
    free: list[int] = []
    index = 0
    while len(free) < count:
        if index not in taken:
            free.append(index)
        index += 1
    return free


def list_filters(deployment: str) -> dict[str, list[str]]:
    """Filters that select this deployment's worker containers, stopped ones included."""
    return {"label": [f"{DEPLOYMENT_LABEL}={deployment}", f"{ROLE_LABEL}=worker"]}


def worker_container_spec(settings: DockerSettings, index: int, now: float) -> dict[str, Any]:
    """Keyword arguments of ``containers.run`` for worker ``index``.

    >>> spec = worker_container_spec(
    ...     DockerSettings("dask", "tcp://127.0.0.1:8786", "w:1", (), {}, (), None, 30), 0, 0.0
    ... )
    >>> spec["name"], spec["command"][:3], spec["network_mode"], spec["read_only"]
    ('dask-worker-0', ['tcp://127.0.0.1:8786', '--name', 'dask-worker-0'], 'host', True)
    """
    name = container_name(settings.deployment, index)
    confined = settings.confinement
    resource_args: list[str] = []
    if confined.memory_limit is not None:
        resource_args += ["--memory-limit", str(confined.memory_limit)]
    if confined.scratch is not None:
        resource_args += ["--local-directory", confined.scratch]
    spec: dict[str, Any] = {
        "image": settings.image,
        "command": [
            settings.scheduler_address,
            "--name",
            name,
            *resource_args,
            *settings.worker_args,
        ],
        "name": name,
        "labels": {
            DEPLOYMENT_LABEL: settings.deployment,
            ROLE_LABEL: "worker",
            REQUESTED_AT_LABEL: f"{now:.3f}",
        },
        "environment": dict(settings.environment),
        "volumes": list(settings.volumes),
        "network_mode": "host",
        "detach": True,
        "stop_signal": "SIGTERM",
        # The container's own grace period (StopTimeout): what `docker stop` without -t, or an
        # engine shutting down, gives a worker stopped from outside to hand its data over.
        "stop_timeout": settings.stop_timeout,
        "read_only": confined.read_only,
        "tmpfs": {path: "" for path in confined.tmpfs},
        "cap_drop": list(confined.cap_drop),
        "security_opt": ["no-new-privileges:true"] if confined.no_new_privileges else [],
    }
    if confined.user is not None:
        spec["user"] = confined.user
    if confined.scratch is not None:
        # An anonymous volume: on disk (a tmpfs would count spilled data as memory) and
        # owned like the image's directory; `remove(v=True)` deletes it with the container.
        spec["mounts"] = [{"Target": confined.scratch, "Type": "volume", "ReadOnly": False}]
    if confined.memory_limit is not None:
        spec["mem_limit"] = confined.memory_limit
    if confined.cpus is not None:
        spec["nano_cpus"] = int(confined.cpus * 1e9)
    return spec


#: Keys of a :func:`worker_container_spec` that belong to the container's HostConfig.
HOST_CONFIG_KEYS = frozenset(
    {"network_mode", "read_only", "tmpfs", "cap_drop", "security_opt", "mounts", "mem_limit"}
    | {"nano_cpus"}
)


def engine_create_arguments(spec: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``APIClient.create_container`` and ``APIClient.create_host_config`` keyword arguments for
    a :func:`worker_container_spec`.

    The SDK's ``containers.create`` cannot pass StopTimeout, so the runner creates through the
    low-level client, which can. ``volumes`` ("host:container[:ro]") are HostConfig binds, and
    the container lists their container paths.

    >>> create, host = engine_create_arguments(
    ...     {"name": "w", "stop_timeout": 30, "read_only": True, "volumes": ["/a:/b:ro"]}
    ... )
    >>> create
    {'name': 'w', 'stop_timeout': 30, 'volumes': ['/b']}
    >>> host
    {'read_only': True, 'binds': ['/a:/b:ro']}
    """
    create = {key: value for key, value in spec.items() if key not in HOST_CONFIG_KEYS}
    host = {key: value for key, value in spec.items() if key in HOST_CONFIG_KEYS}
    binds = list(create.pop("volumes", []))
    if binds:
        create["volumes"] = [bind.split(":")[1] for bind in binds]
        host["binds"] = binds
    return create, host


def container_state(status: str) -> InstanceState:
    """Map Docker's container status to the instance's: pending, running or exited."""
    if status in PENDING_STATES:
        return InstanceState.PENDING
    if status in EXITED_STATES:
        return InstanceState.EXITED
    return InstanceState.RUNNING


def parse_container(name: str, status: str, labels: Mapping[str, str]) -> Instance:
    """One instance from a container's name, status and labels."""
    try:
        requested_at = float(labels.get(REQUESTED_AT_LABEL, "0"))
    except ValueError:
        requested_at = 0.0
    return Instance(name.lstrip("/"), container_state(status), requested_at)


class DockerRunner:
    """The one place that talks to the engine, through the Docker SDK, in a worker thread.

    Every call is bounded by the client's timeout, so a hung engine fails a tick instead of
    holding it forever.
    """

    def __init__(self, client: Any) -> None:
        import docker

        self._docker = docker
        self._client = client

    @classmethod
    def connect(cls, base_url: str | None, timeout: float) -> DockerRunner:
        """A runner on ``base_url`` (default: DOCKER_HOST or the local socket)."""
        import docker

        if base_url:
            return cls(docker.DockerClient(base_url=base_url, timeout=timeout))
        return cls(docker.from_env(timeout=timeout))

    async def list(self, filters: Mapping[str, list[str]]) -> list[tuple[str, str, dict[str, str]]]:
        """(name, status, labels) of every container matching ``filters``.

        One request: the listing carries all three, and inspecting each container as well
        would fail the whole listing whenever one is removed in between.
        """

        def call() -> list[tuple[str, str, dict[str, str]]]:
            listed = self._client.api.containers(all=True, filters=dict(filters))
            # The engine's list names start with "/"; everything else uses the bare name.
            return [
                (c["Names"][0].lstrip("/"), c["State"], dict(c["Labels"] or {})) for c in listed
            ]

        return await asyncio.to_thread(call)

    async def run(self, spec: Mapping[str, Any]) -> bool:
        """Create and start one container; False when its name is already taken.

        A container created but not started (the creation's answer was lost, or the start
        failed) is removed again: left in state "created" it would count as pending until the
        startup timeout.
        """
        create, host = engine_create_arguments(spec)

        def call() -> bool:
            api = self._client.api
            try:
                api.create_container(**create, host_config=api.create_host_config(**host))
            except self._docker.errors.APIError as error:
                if error.status_code == 409:  # another scaler took this name first
                    return False
                self._discard(spec["name"])
                raise
            except Exception:
                self._discard(spec["name"])
                raise
            try:
                self._client.api.start(spec["name"])
            except Exception:
                self._discard(spec["name"])
                raise
            return True

        return await asyncio.to_thread(call)

    def _discard(self, name: str) -> None:
        """Remove a container that never started; best effort, the caller reports its error."""
        with contextlib.suppress(Exception):
            self._client.api.remove_container(name, force=True, v=True)

    async def remove(self, name: str, stop_timeout: int) -> None:
        """Stop (SIGTERM, then SIGKILL after ``stop_timeout``) and remove one container."""

        def call() -> None:
            try:
                container = self._client.containers.get(name)
                container.stop(timeout=stop_timeout)
                container.remove(force=True, v=True)  # v: its anonymous scratch volume
            except self._docker.errors.NotFound:
                return

        await asyncio.to_thread(call)

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)


#: Seconds a container the engine refused stays listed (pending, with the engine's error as its
#: reason) before the next scale-up may try again: the loop holds scale-ups while it is listed.
RETRY_REFUSED_AFTER = 60.0


#: The engine's answers that refuse the request itself: invalid parameter, no such image.
REFUSAL_STATUSES = frozenset({400, 404})


def engine_refusal(error: BaseException) -> str | None:
    """The engine's own words when it refused to create or start a container (a missing image,
    a bad mount, an invalid option); ``None`` for anything else (an engine that did not answer,
    or failed on its side).

    Only 400 (invalid parameter) and 404 (no such image) say the request itself is wrong and
    will be refused again. A 5xx is the engine failing, a 409 a conflict with a container
    being removed, a 403 a denial that may be lifted: the tick fails and the next one tries
    again at once, as before, rather than waiting out ``RETRY_REFUSED_AFTER``.
    """
    import docker

    if not isinstance(error, docker.errors.APIError):
        return None
    if not isinstance(error, docker.errors.NotFound) and error.status_code not in REFUSAL_STATUSES:
        return None
    explanation = error.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode(errors="replace")
    return f"the Docker engine refused the container: {explanation or error}"


class DockerBackend:
    """Runs, lists and removes one deployment's worker containers.

    A container the engine refuses to create or start (it is removed again) stays listed as a
    pending instance carrying the engine's error as its reason, for ``RETRY_REFUSED_AFTER``
    seconds: the loop logs it once and asks for no more meanwhile, instead of failing every
    tick with the same error.
    """

    def __init__(
        self,
        settings: DockerSettings,
        runner: DockerRunner,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.clock = clock
        self._refused: dict[str, tuple[float, str]] = {}

    def _refusals(self) -> list[Instance]:
        now = self.clock()
        self._refused = {
            name: (at, reason)
            for name, (at, reason) in self._refused.items()
            if now - at < RETRY_REFUSED_AFTER
        }
        return [
            Instance(name, InstanceState.PENDING, at, reason)
            for name, (at, reason) in sorted(self._refused.items())
        ]

    async def _containers(self) -> list[tuple[str, str, dict[str, str]]]:
        listed = await self.runner.list(list_filters(self.settings.deployment))
        # The engine filtered already; checking again keeps a lax engine from leaking others.
        return [c for c in listed if c[2].get(DEPLOYMENT_LABEL) == self.settings.deployment]

    async def instances(self) -> list[Instance]:
        listed = [parse_container(*container) for container in await self._containers()]
        return listed + self._refusals()

    async def scale_up(self, n: int) -> None:
        if self._refusals():
            return  # another would be refused the same way; tried again when it expires
        containers = await self._containers()
        missing = n - count_requested([parse_container(*c) for c in containers])
        if missing <= 0:
            return
        taken = [name for name, _, _ in containers]
        for index in free_indices(self.settings.deployment, taken, missing):
            spec = worker_container_spec(self.settings, index, self.clock())
            try:
                await self.runner.run(spec)
            except Exception as error:
                reason = engine_refusal(error)
                if reason is None:
                    raise
                self._refused[spec["name"]] = (self.clock(), reason)
                return  # the next one would be refused the same way

    async def scale_down(self, names: Collection[str]) -> None:
        for name in names:
            self._refused.pop(name, None)  # never created: nothing to remove
        known = {name for name, _, _ in await self._containers()}
        for name in sorted(known & set(names)):
            await self.runner.remove(name, self.settings.stop_timeout)

    async def close(self) -> None:
        await self.runner.close()


def create(context: BackendContext) -> Backend:
    """Build the Docker backend from the scaler configuration's ``backend.options``."""
    settings = load_settings(context)
    return DockerBackend(
        settings, DockerRunner.connect(settings.base_url, settings.request_timeout)
    )


__all__ = ["DockerBackend", "create"]
