"""Docker: each worker is one container on the host network, named by the container name.

Options (``backend.options`` in the scaler configuration)::

    image: ghcr.io/dask-deploy/dask-deploy-worker:0.1.0   # required: the worker image
    worker_args: []            # optional: extra `dask worker` arguments, e.g. ["--nthreads", "2"]
    environment: {}            # optional: environment variables of every worker container
    volumes: []                # optional: bind mounts, "host:container[:ro]" (e.g. TLS files)
    base_url: null             # optional: the engine's address; default DOCKER_HOST or the socket
    stop_timeout: 30           # optional: seconds `docker stop` waits before SIGKILL

Containers are named ``<deployment>-worker-<index>`` (the lowest free index) and run
``dask worker <scheduler> --name <container name>`` with ``network_mode: host``, so
``Instance.name`` is the container name the scheduler knows. Labels ``dask-deploy.deployment``
and ``dask-deploy.role=worker`` mark them; listing and removing filter on both, so the backend
never touches another deployment's containers. No image is ever pulled: a missing image is an
error from the engine.

The container specification and the state mapping are pure functions; ``DockerRunner`` is the
one place that calls the Docker SDK, in a thread so the event loop keeps ticking.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .._errors import SettingsError
from ._protocol import Backend, BackendContext, Instance, InstanceState, count_requested

DEPLOYMENT_LABEL = "dask-deploy.deployment"
ROLE_LABEL = "dask-deploy.role"
REQUESTED_AT_LABEL = "dask-deploy.requested-at"
#: Docker's container states; "created" has not started yet, anything unknown counts as
#: running so a state added by a later engine holds its container instead of duplicating it.
PENDING_STATES = frozenset({"created"})
EXITED_STATES = frozenset({"exited", "dead", "removing"})


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


def load_settings(context: BackendContext) -> DockerSettings:
    """Validate ``backend.options``; raise :class:`SettingsError` naming the bad key."""
    options = dict(context.options)
    allowed = {"image", "worker_args", "environment", "volumes", "base_url", "stop_timeout"}
    for key in sorted(options.keys() - allowed):
        raise SettingsError(f"backend.options.{key}", options[key], f"one of {sorted(allowed)}")
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
    return DockerSettings(
        context.deployment,
        context.scheduler_address,
        image,
        tuple(worker_args),
        dict(environment),
        tuple(volumes),
        base_url,
        stop_timeout,
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
    >>> spec["name"], spec["command"], spec["network_mode"]
    ('dask-worker-0', ['tcp://127.0.0.1:8786', '--name', 'dask-worker-0'], 'host')
    """
    name = container_name(settings.deployment, index)
    return {
        "image": settings.image,
        "command": [settings.scheduler_address, "--name", name, *settings.worker_args],
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
    }


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
    """The one place that talks to the engine, through the Docker SDK, in a worker thread."""

    def __init__(self, base_url: str | None) -> None:
        import docker

        self._docker = docker
        self._client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()

    async def list(self, filters: Mapping[str, list[str]]) -> list[tuple[str, str, dict[str, str]]]:
        """(name, status, labels) of every container matching ``filters``."""

        def call() -> list[tuple[str, str, dict[str, str]]]:
            containers = self._client.containers.list(all=True, filters=dict(filters))
            return [(c.name, c.status, dict(c.labels)) for c in containers]

        return await asyncio.to_thread(call)

    async def run(self, spec: Mapping[str, Any]) -> bool:
        """Create and start one container; False when its name is already taken."""

        def call() -> bool:
            try:
                self._client.containers.run(**spec)
            except self._docker.errors.APIError as error:
                if error.status_code == 409:  # another scaler took this name first
                    return False
                raise
            return True

        return await asyncio.to_thread(call)

    async def remove(self, name: str, stop_timeout: int) -> None:
        """Stop (SIGTERM, then SIGKILL after ``stop_timeout``) and remove one container."""

        def call() -> None:
            try:
                container = self._client.containers.get(name)
                container.stop(timeout=stop_timeout)
                container.remove(force=True)
            except self._docker.errors.NotFound:
                return

        await asyncio.to_thread(call)

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)


class DockerBackend:
    """Runs, lists and removes one deployment's worker containers."""

    def __init__(self, settings: DockerSettings, runner: DockerRunner) -> None:
        self.settings = settings
        self.runner = runner

    async def _containers(self) -> list[tuple[str, str, dict[str, str]]]:
        listed = await self.runner.list(list_filters(self.settings.deployment))
        # The engine filtered already; checking again keeps a lax engine from leaking others.
        return [c for c in listed if c[2].get(DEPLOYMENT_LABEL) == self.settings.deployment]

    async def instances(self) -> list[Instance]:
        return [parse_container(*container) for container in await self._containers()]

    async def scale_up(self, n: int) -> None:
        containers = await self._containers()
        missing = n - count_requested([parse_container(*c) for c in containers])
        if missing <= 0:
            return
        taken = [name for name, _, _ in containers]
        for index in free_indices(self.settings.deployment, taken, missing):
            await self.runner.run(worker_container_spec(self.settings, index, time.time()))

    async def scale_down(self, names: Collection[str]) -> None:
        known = {name for name, _, _ in await self._containers()}
        for name in sorted(known & set(names)):
            await self.runner.remove(name, self.settings.stop_timeout)

    async def close(self) -> None:
        await self.runner.close()


def create(context: BackendContext) -> Backend:
    """Build the Docker backend from the scaler configuration's ``backend.options``."""
    settings = load_settings(context)
    return DockerBackend(settings, DockerRunner(settings.base_url))


__all__ = ["DockerBackend", "create"]
