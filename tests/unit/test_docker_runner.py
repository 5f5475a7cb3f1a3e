"""The Docker runner over a fake SDK client: one listing request, no half-started container."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import docker.errors
import pytest
import requests

from dask_deploy import SettingsError
from dask_deploy.backends import BackendContext
from dask_deploy.backends.docker import DockerRunner, load_settings, worker_container_spec


def error(status: int) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError(f"injected {status}", response=response)


class FakeEngine:
    """Records the calls; fails the one named in ``fail`` with ``failure``."""

    def __init__(self, fail: str = "", failure: Exception | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail, self.failure = fail, failure
        self.created: list[dict[str, Any]] = []
        self.api = SimpleNamespace(
            create_container=self.create,
            create_host_config=lambda **host: {"host": host},
            start=self.start,
            remove_container=self.remove_container,
            containers=self.list,
        )

    def _call(self, what: str, name: str) -> None:
        self.calls.append((what, name))
        if what == self.fail and self.failure is not None:
            raise self.failure

    def create(self, **arguments: Any) -> None:
        self.created.append(arguments)
        self._call("create", arguments["name"])

    def start(self, name: str) -> None:
        self._call("start", name)

    def remove_container(self, name: str, force: bool, v: bool) -> None:
        assert force and v
        self._call("remove", name)

    def list(self, all: bool, filters: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        self._call("list", ",".join(filters["label"]))
        return [
            {"Names": ["/dask-worker-0"], "State": "running", "Labels": {"a": "b"}},
            {"Names": ["/dask-worker-1"], "State": "created", "Labels": None},
        ]


async def test_listing_is_one_request_with_names_states_and_labels() -> None:
    engine = FakeEngine()
    listed = await DockerRunner(engine).list({"label": ["x=y"]})
    assert listed == [("dask-worker-0", "running", {"a": "b"}), ("dask-worker-1", "created", {})]
    assert engine.calls == [("list", "x=y")]


async def test_run_creates_then_starts() -> None:
    engine = FakeEngine()
    assert await DockerRunner(engine).run({"name": "dask-worker-0"}) is True
    assert engine.calls == [("create", "dask-worker-0"), ("start", "dask-worker-0")]


async def test_the_container_is_created_with_its_stop_timeout_and_host_config() -> None:
    engine = FakeEngine()
    spec = worker_container_spec(load_settings(context(stop_timeout=45)), 0, 0.0)
    assert await DockerRunner(engine).run(spec) is True
    [created] = engine.created
    assert created["stop_timeout"] == 45  # StopTimeout: what `docker stop` without -t waits
    assert created["host_config"]["host"]["network_mode"] == "host"
    assert created["host_config"]["host"]["read_only"] is True
    assert "network_mode" not in created and created["image"] == "w:1"


async def test_a_name_taken_on_create_is_not_an_error_and_nothing_is_removed() -> None:
    engine = FakeEngine("create", error(409))
    assert await DockerRunner(engine).run({"name": "dask-worker-0"}) is False
    assert engine.calls == [("create", "dask-worker-0")]


@pytest.mark.parametrize(
    ("fail", "failure"),
    [
        ("start", error(500)),
        ("start", error(409)),
        ("start", requests.exceptions.ReadTimeout("hung")),
        ("create", error(503)),
        ("create", requests.exceptions.ReadTimeout("hung")),
    ],
)
async def test_a_container_that_did_not_start_is_removed_and_the_error_raised(
    fail: str, failure: Exception
) -> None:
    engine = FakeEngine(fail, failure)
    with pytest.raises(type(failure)):
        await DockerRunner(engine).run({"name": "dask-worker-0"})
    assert engine.calls[-1] == ("remove", "dask-worker-0")


async def test_a_failing_removal_does_not_hide_the_start_error() -> None:
    engine = FakeEngine("start", error(500))
    engine.api.remove_container = lambda *a, **k: (_ for _ in ()).throw(error(403))
    with pytest.raises(docker.errors.APIError) as raised:
        await DockerRunner(engine).run({"name": "dask-worker-0"})
    assert raised.value.status_code == 500


def context(**options: object) -> BackendContext:
    return BackendContext("dask", "tcp://127.0.0.1:8786", {"image": "w:1", **options})


def test_request_timeout_defaults_to_30_seconds_and_accepts_numbers() -> None:
    assert load_settings(context()).request_timeout == 30.0
    assert load_settings(context(request_timeout=2)).request_timeout == 2.0


@pytest.mark.parametrize("value", [0, -1, True, "30", None])
def test_bad_request_timeout_names_the_key(value: object) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(context(request_timeout=value))
    assert raised.value.key == "backend.options.request_timeout"
