"""The Docker backend's pure parts, and its logic over an in-memory runner."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from dask_deploy import SettingsError
from dask_deploy.backends import BackendContext, InstanceState
from dask_deploy.backends.docker import (
    Confinement,
    DockerBackend,
    DockerSettings,
    container_state,
    free_indices,
    list_filters,
    load_settings,
    parse_container,
    worker_container_spec,
)

SETTINGS = DockerSettings(
    "dask", "tcp://127.0.0.1:8786", "w:1", ("--nthreads", "2"), {"A": "1"}, ("/a:/a:ro",), None, 5
)


def context(**options: object) -> BackendContext:
    return BackendContext("dask", "tcp://127.0.0.1:8786", {"image": "w:1", **options})


def test_worker_name_is_the_container_name() -> None:
    spec = worker_container_spec(SETTINGS, 4, 12.5)
    assert spec["name"] == "dask-worker-4"
    assert spec["command"] == [
        "tcp://127.0.0.1:8786",
        "--name",
        "dask-worker-4",
        "--local-directory",
        "/home/dask",
        "--nthreads",
        "2",
    ]


def test_workers_run_on_the_host_network_with_labels() -> None:
    spec = worker_container_spec(SETTINGS, 0, 12.5)
    assert spec["network_mode"] == "host"
    assert spec["labels"] == {
        "dask-deploy.deployment": "dask",
        "dask-deploy.role": "worker",
        "dask-deploy.requested-at": "12.500",
    }
    assert spec["environment"] == {"A": "1"}
    assert spec["volumes"] == ["/a:/a:ro"]
    assert spec["image"] == "w:1"


def test_workers_are_hardened_by_default() -> None:
    spec = worker_container_spec(load_settings(context()), 0, 1.0)
    assert spec["user"] == "10001:10001"
    assert spec["read_only"] is True
    assert spec["tmpfs"] == {"/tmp": ""}
    assert spec["security_opt"] == ["no-new-privileges:true"]
    assert spec["cap_drop"] == ["ALL"]
    # Spilled data goes to an anonymous volume on disk, not to the tmpfs (which is memory).
    assert spec["mounts"] == [{"Target": "/home/dask", "Type": "volume", "ReadOnly": False}]
    command = spec["command"]
    assert command[command.index("--local-directory") + 1] == "/home/dask"
    assert "mem_limit" not in spec and "nano_cpus" not in spec and "--memory-limit" not in command


def test_memory_limit_bounds_the_container_and_the_worker_alike() -> None:
    settings = load_settings(context(memory_limit="512MiB", cpus=1.5))
    spec = worker_container_spec(settings, 0, 1.0)
    assert spec["mem_limit"] == 512 * 2**20
    command = spec["command"]
    assert command[command.index("--memory-limit") + 1] == str(512 * 2**20)
    assert spec["nano_cpus"] == 1_500_000_000


def test_confinement_can_be_relaxed_explicitly() -> None:
    options = {"user": None, "read_only": False, "tmpfs": [], "scratch": None}
    options |= {"no_new_privileges": False, "cap_drop": []}
    settings = load_settings(context(**options))
    assert settings.confinement == Confinement(None, False, (), None, False, (), None, None)
    spec = worker_container_spec(settings, 0, 1.0)
    assert "user" not in spec and "mounts" not in spec and spec["security_opt"] == []
    assert "--local-directory" not in spec["command"]


def test_list_filters_select_the_deployment_and_role() -> None:
    assert list_filters("dask") == {
        "label": ["dask-deploy.deployment=dask", "dask-deploy.role=worker"]
    }


def test_free_indices_fill_gaps_and_ignore_other_names() -> None:
    taken = ["dask-worker-0", "dask-worker-2", "other-worker-1", "dask-worker-x"]
    assert free_indices("dask", taken, 3) == [1, 3, 4]


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("created", InstanceState.PENDING),
        ("running", InstanceState.RUNNING),
        ("restarting", InstanceState.RUNNING),
        ("paused", InstanceState.RUNNING),
        ("exited", InstanceState.EXITED),
        ("dead", InstanceState.EXITED),
    ],
)
def test_container_states(status: str, state: InstanceState) -> None:
    assert container_state(status) is state


def test_parse_container_reads_the_requested_time() -> None:
    instance = parse_container("/dask-worker-1", "running", {"dask-deploy.requested-at": "3.5"})
    assert (instance.name, instance.state, instance.requested_at) == (
        "dask-worker-1",
        InstanceState.RUNNING,
        3.5,
    )


def test_settings_defaults() -> None:
    settings = load_settings(context())
    assert (settings.worker_args, settings.environment, settings.stop_timeout) == ((), {}, 30)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"image": ""}, "backend.options.image"),
        ({"worker_args": "--nthreads 2"}, "backend.options.worker_args"),
        ({"environment": {"A": 1}}, "backend.options.environment"),
        ({"stop_timeout": -1}, "backend.options.stop_timeout"),
        ({"volumes": ["/no-colon"]}, "backend.options.volumes"),
        ({"imagee": "x"}, "backend.options.imagee"),
        ({"memory_limit": "lots"}, "backend.options.memory_limit"),
        ({"memory_limit": 0}, "backend.options.memory_limit"),
        ({"cpus": 0}, "backend.options.cpus"),
        ({"cpus": "2"}, "backend.options.cpus"),
        ({"user": "root; rm"}, "backend.options.user"),
        ({"read_only": "yes"}, "backend.options.read_only"),
        ({"tmpfs": "/tmp"}, "backend.options.tmpfs"),
        ({"scratch": "relative"}, "backend.options.scratch"),
        ({"cap_drop": "ALL"}, "backend.options.cap_drop"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, object], key: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(context(**options))
    assert error.value.key == key


class MemoryRunner:
    """Containers as a dict: name -> (status, labels)."""

    def __init__(self) -> None:
        self.containers: dict[str, tuple[str, dict[str, str]]] = {}
        self.removed: list[str] = []

    async def list(self, filters: Mapping[str, list[str]]) -> list[tuple[str, str, dict[str, str]]]:
        wanted = dict(item.split("=", 1) for item in filters["label"])
        return [
            (name, status, labels)
            for name, (status, labels) in self.containers.items()
            if all(labels.get(k) == v for k, v in wanted.items())
        ]

    async def run(self, spec: Mapping[str, Any]) -> bool:
        if spec["name"] in self.containers:
            return False
        self.containers[spec["name"]] = ("running", dict(spec["labels"]))
        return True

    async def remove(self, name: str, stop_timeout: int) -> None:
        self.removed.append(name)
        self.containers.pop(name, None)

    async def close(self) -> None:
        return None


def backend(runner: MemoryRunner) -> DockerBackend:
    return DockerBackend(SETTINGS, runner)  # type: ignore[arg-type]


async def test_scale_up_counts_pending_and_running_but_not_exited() -> None:
    runner = MemoryRunner()
    labels = {"dask-deploy.deployment": "dask", "dask-deploy.role": "worker"}
    runner.containers["dask-worker-0"] = ("created", labels)
    runner.containers["dask-worker-1"] = ("exited", labels)
    await backend(runner).scale_up(3)
    assert sorted(runner.containers) == [
        "dask-worker-0",
        "dask-worker-1",
        "dask-worker-2",
        "dask-worker-3",
    ]
    await backend(runner).scale_up(2)  # never lowers
    assert len(runner.containers) == 4


async def test_scale_down_removes_exactly_the_named_containers_of_this_deployment() -> None:
    runner = MemoryRunner()
    other = {"dask-deploy.deployment": "other", "dask-deploy.role": "worker"}
    runner.containers["other-worker-0"] = ("running", other)
    await backend(runner).scale_up(3)
    await backend(runner).scale_down(["dask-worker-1", "other-worker-0", "unknown"])
    assert runner.removed == ["dask-worker-1"]
    names = [i.name for i in await backend(runner).instances()]
    assert sorted(names) == ["dask-worker-0", "dask-worker-2"]


class RefusingRunner(MemoryRunner):
    """The engine answers every create with 404 No such image."""

    async def run(self, spec: Mapping[str, Any]) -> bool:
        import docker

        raise docker.errors.ImageNotFound("404 Client Error", explanation="No such image: w:1")


async def test_a_refused_container_is_pending_with_the_engines_error_for_a_while() -> None:
    from dask_deploy.backends.docker import RETRY_REFUSED_AFTER

    now = [1000.0]
    docker_backend = DockerBackend(SETTINGS, RefusingRunner(), clock=lambda: now[0])  # type: ignore[arg-type]
    await docker_backend.scale_up(2)  # no exception: the refusal is the instance's reason
    (refused,) = await docker_backend.instances()
    assert refused.name == "dask-worker-0" and refused.state is InstanceState.PENDING
    assert refused.reason == "the Docker engine refused the container: No such image: w:1"
    await docker_backend.scale_up(2)  # counted as requested: not asked again meanwhile
    assert len(await docker_backend.instances()) == 1
    now[0] += RETRY_REFUSED_AFTER
    assert await docker_backend.instances() == []  # then tried again by the next scale-up
    await docker_backend.scale_up(1)
    (again,) = await docker_backend.instances()
    await docker_backend.scale_down([again.name])  # cancelled: nothing to remove in the engine
    assert await docker_backend.instances() == []


class FailingRunner(MemoryRunner):
    """The engine fails on its side (500) on every create: a transient error, not a refusal."""

    async def run(self, spec: Mapping[str, Any]) -> bool:
        import docker
        import requests

        response = requests.Response()
        response.status_code = 500
        raise docker.errors.APIError("500 Server Error", response, explanation="engine failed")


async def test_an_engine_failure_is_not_held_as_a_refusal() -> None:
    # The tick fails and the next one tries again at once (the loop retries it), rather than
    # listing a pending instance that holds scale-ups for RETRY_REFUSED_AFTER.
    docker_backend = DockerBackend(SETTINGS, FailingRunner())  # type: ignore[arg-type]
    with pytest.raises(Exception, match="500 Server Error"):
        await docker_backend.scale_up(1)
    assert await docker_backend.instances() == []
