"""The Marathon backend: pure builders and parsers, then each error path against the stand-in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from marathon.exceptions import ConflictError, InternalServerError, NoResponseError

from dask_deploy import SettingsError
from dask_deploy.backends import BackendContext, Instance, InstanceState
from dask_deploy.backends.marathon import (
    MarathonBackend,
    kill_request,
    load_credentials,
    load_settings,
    parse_tasks,
    scale_up_request,
    task_state,
)
from dask_deploy.testing.marathon import MarathonStandIn
from marathon_support import marathon_standin

pytestmark = pytest.mark.marathon

APP = "/dask/worker"


def settings(**options: Any) -> Any:
    base = {"url": "http://127.0.0.1:1", "app_id": APP}
    return load_settings(BackendContext("dask", "tcp://127.0.0.1:8786", {**base, **options}), {})


# --- settings and credentials -------------------------------------------------------------


def test_defaults_verify_tls_and_do_not_force() -> None:
    loaded = settings()
    assert loaded.tls_verify is True
    assert loaded.force is False
    assert loaded.app_id == APP
    assert loaded.credentials.username is None and loaded.credentials.token is None


@pytest.mark.parametrize(
    ("key", "value"),
    [("url", "marathon:8080"), ("app_id", ""), ("force", "yes"), ("retry_for", 0), ("nope", 1)],
)
def test_bad_option_names_its_key(key: str, value: object) -> None:
    with pytest.raises(SettingsError, match=f"backend.options.{key}"):
        settings(**{key: value})


def test_credentials_from_environment() -> None:
    token = load_credentials(None, {"MARATHON_AUTH_TOKEN": "t0k"})
    assert token.token == "t0k" and token.username is None
    basic = load_credentials(None, {"MARATHON_USERNAME": "u", "MARATHON_PASSWORD": "p"})
    assert (basic.username, basic.password) == ("u", "p")


def test_credentials_from_file_take_precedence(tmp_path: Path) -> None:
    path = tmp_path / "credentials.yaml"
    path.write_text("username: alice\npassword: s3cret\n")
    loaded = load_credentials(str(path), {"MARATHON_AUTH_TOKEN": "ignored"})
    assert (loaded.username, loaded.password, loaded.token) == ("alice", "s3cret", None)


def test_bad_credentials_file_is_a_settings_error(tmp_path: Path) -> None:
    path = tmp_path / "credentials.yaml"
    path.write_text("user: alice\n")
    with pytest.raises(SettingsError, match="credentials_file"):
        load_credentials(str(path), {})
    with pytest.raises(SettingsError, match="credentials_file"):
        load_credentials(str(tmp_path / "missing.yaml"), {})


def test_client_gets_credentials_and_tls_settings(tmp_path: Path) -> None:
    path = tmp_path / "token.yaml"
    path.write_text("token: abc\n")
    backend = MarathonBackend(settings(credentials_file=str(path), tls_verify="/ca.pem"))
    assert backend.client.auth_token == "abc"
    assert backend.client.verify == "/ca.pem"
    basic = MarathonBackend(
        load_settings(
            BackendContext("dask", "x", {"url": "https://m:8443", "app_id": APP}),
            {"MARATHON_USERNAME": "u", "MARATHON_PASSWORD": "p"},
        )
    )
    assert basic.client.auth == ("u", "p")
    assert basic.client.verify is True


# --- pure builders and parsers ---------------------------------------------------------------


def test_task_states_map_to_instance_states() -> None:
    assert task_state("TASK_STAGING") is InstanceState.PENDING
    assert task_state("TASK_STARTING") is InstanceState.PENDING
    assert task_state("TASK_RUNNING") is InstanceState.RUNNING
    for ended in ("TASK_KILLING", "TASK_KILLED", "TASK_FAILED", "TASK_FINISHED"):
        assert task_state(ended) is InstanceState.EXITED


def test_parse_tasks_names_instances_by_task_id_and_stage_time() -> None:
    body = {
        "tasks": [
            {"id": "dask_worker.instance-1._app.1", "state": "TASK_RUNNING",
             "stagedAt": "2026-01-01T00:00:00.000Z"},
            {"id": "dask_worker.instance-2._app.1", "state": "TASK_STAGING"},
        ]
    }  # fmt: skip
    first, second = parse_tasks(body)
    assert first == Instance("dask_worker.instance-1._app.1", InstanceState.RUNNING, 1767225600.0)
    assert second.state is InstanceState.PENDING and second.requested_at == 0.0


def test_scale_up_only_raises() -> None:
    loaded = settings()
    assert scale_up_request(loaded, current=3, n=3) is None
    assert scale_up_request(loaded, current=5, n=3) is None
    request = scale_up_request(loaded, current=1, n=4)
    assert request is not None and (request.app_id, request.instances) == (APP, 4)


def test_scale_body_is_flat_so_the_client_can_encode_it_on_python_3_11() -> None:
    # The client's JSON encoders use collections.Iterable (gone since Python 3.10) for nested
    # model objects; a flat {"instances": n} never reaches them.
    from marathon.models import MarathonApp

    assert MarathonApp(instances=0).to_json() == '{"instances": 0}'
    assert MarathonApp(instances=4).to_json() == '{"instances": 4}'


def test_kill_request_kills_exactly_live_named_tasks() -> None:
    live = [
        Instance("a", InstanceState.RUNNING, 0),
        Instance("b", InstanceState.PENDING, 0),
        Instance("c", InstanceState.EXITED, 0),
        Instance("d", InstanceState.RUNNING, 0),
    ]
    request = kill_request(settings(force=True), live, ["d", "b", "c", "unknown"])
    assert request is not None
    assert request.task_ids == ("b", "d")
    assert request.force is True
    assert kill_request(settings(), live, ["c", "unknown"]) is None


# --- against the stand-in: sending, retries, errors -----------------------------------------


@pytest.fixture
def marathon(tmp_path: Path) -> Iterator[MarathonStandIn]:
    with marathon_standin(workdir=tmp_path / "sandboxes", deployment_seconds=0.0) as standin:
        app = {"id": APP, "cmd": "sleep 60", "instances": 0, "taskKillGracePeriodSeconds": 1}
        requests.post(f"{standin.url}/v2/apps", json=app, timeout=5).raise_for_status()
        yield standin


def backend_for(standin: MarathonStandIn, delays: list[float], **options: Any) -> MarathonBackend:
    async def record(delay: float) -> None:
        delays.append(delay)

    loaded = load_settings(
        BackendContext("dask", "x", {"url": standin.url, "app_id": APP, **options}), {}
    )
    return MarathonBackend(loaded, sleep=record)


async def running(backend: MarathonBackend, n: int) -> list[Instance]:
    for _ in range(100):
        instances = await backend.instances()
        if sum(i.state is InstanceState.RUNNING for i in instances) == n:
            return instances
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {n} running tasks, have {instances}")


def app_instances(standin: MarathonStandIn) -> int:
    body = requests.get(f"{standin.url}/v2/apps{APP}", timeout=5).json()
    return int(body["app"]["instances"])


async def test_scale_up_sets_instances_and_scale_down_kills_exactly_those(
    marathon: MarathonStandIn,
) -> None:
    backend = backend_for(marathon, [])
    await backend.scale_up(3)
    assert app_instances(marathon) == 3
    tasks = await running(backend, 3)
    victim = tasks[1].name
    await backend.scale_down([victim, "dask_worker.instance-unknown._app.1"])
    assert app_instances(marathon) == 2
    survivors = {t.name for t in await running(backend, 2) if t.state is InstanceState.RUNNING}
    assert survivors == {t.name for t in tasks} - {victim}
    await backend.scale_down([victim])  # a retried call changes nothing
    assert app_instances(marathon) == 2
    await backend.close()


async def test_conflict_is_retried_until_the_deployment_ends(marathon: MarathonStandIn) -> None:
    delays: list[float] = []
    # The retry budget is real time (the sleeps are only recorded): 30 s, so that the
    # round trips of a loaded machine do not end the retries before the 409s do.
    backend = backend_for(marathon, delays, retry_for=30)
    marathon.inject(409, times=2, method="PUT")
    await backend.scale_up(1)
    assert app_instances(marathon) == 1
    assert delays == [0.25, 0.5]


async def test_server_errors_back_off(marathon: MarathonStandIn) -> None:
    delays: list[float] = []
    backend = backend_for(marathon, delays, retry_for=30)
    marathon.inject(503, times=3, method="GET")
    assert await backend.instances() == []
    assert delays == [0.25, 0.5, 1.0]


async def test_timeout_is_retried(marathon: MarathonStandIn) -> None:
    delays: list[float] = []
    # A second longer than the client waits, in a budget of real time no loaded machine uses
    # up: the one answer held back times out, the retry is answered.
    backend = backend_for(marathon, delays, request_timeout=1.0, retry_for=30)
    marathon.inject(None, delay=5.0, times=1, method="GET")
    assert await backend.instances() == []
    assert delays == [0.25]


async def test_gives_up_after_retry_for(marathon: MarathonStandIn) -> None:
    delays: list[float] = []
    backend = backend_for(marathon, delays, retry_for=1)
    marathon.inject(500, times=100)
    with pytest.raises(InternalServerError):
        await backend.instances()
    assert sum(delays) <= 1


async def test_a_hung_marathon_fails_the_call_within_about_one_interval(
    marathon: MarathonStandIn,
) -> None:
    # Defaults: the scaler's loop retries a failed tick at its interval (1 s by default), so
    # one call must not keep a tick busy much longer than request_timeout + retry_for.
    assert settings().retry_for == 1.0
    backend = backend_for(marathon, [], request_timeout=0.3)
    marathon.inject(None, delay=5.0, times=100, method="GET")
    started = time.monotonic()
    with pytest.raises(NoResponseError):
        await backend.instances()
    assert time.monotonic() - started < 0.3 + 1.0 + 0.3 + 1.0  # last attempt starts in budget
    await backend.close()


async def test_force_overrides_the_lock(tmp_path: Path) -> None:
    with marathon_standin(workdir=tmp_path, deployment_seconds=60) as standin:
        app = {"id": APP, "cmd": "sleep 60", "instances": 0}
        requests.post(f"{standin.url}/v2/apps", json=app, timeout=5).raise_for_status()
        locked = backend_for(standin, [], retry_for=0.1)
        with pytest.raises(ConflictError):
            await locked.scale_up(1)
        await backend_for(standin, [], force=True).scale_up(1)
        assert app_instances(standin) == 1


async def test_unreachable_marathon_raises_no_response() -> None:
    backend = MarathonBackend(settings(retry_for=0.1, request_timeout=0.2))
    with pytest.raises(NoResponseError):
        await backend.instances()


def _steps(declined: dict[str, int], agents: int) -> list[dict[str, object]]:
    return [
        {"reason": reason, "declined": declined.get(reason, 0), "processed": agents}
        for reason in ("UnfulfilledRole", "UnfulfilledConstraint", "InsufficientCpus",
                       "InsufficientMemory", "InsufficientPorts")
    ]  # fmt: skip


def test_the_launch_queue_gives_a_reason_only_when_every_agent_declines() -> None:
    from dask_deploy.backends.marathon import queue_reason

    every = {"processedOffersSummary": {"rejectSummaryLastOffers": _steps(
        {"InsufficientCpus": 2, "InsufficientPorts": 1}, 3)}}  # fmt: skip
    assert queue_reason(every) == (
        "no Mesos offer fits, Marathon's launch queue says: InsufficientCpus (2 of 3), "
        "InsufficientPorts (1 of 3)"
    )
    one_fits = {"processedOffersSummary": {"rejectSummaryLastOffers": _steps(
        {"InsufficientCpus": 2}, 3)}}  # fmt: skip
    assert queue_reason(one_fits) is None
    assert queue_reason({"processedOffersSummary": {"processedOffersCount": 0}}) is None


def test_cancelling_queued_instances_never_goes_below_the_live_tasks() -> None:
    from dask_deploy.backends.marathon import cancel_queued_request, queued_instances

    settings = load_settings(
        BackendContext("d", "tcp://127.0.0.1:8786", {"url": "http://m:8080", "app_id": "/d/w"})
    )
    assert cancel_queued_request(settings, instances=5, active=3, cancelled=1).instances == 4
    assert cancel_queued_request(settings, instances=5, active=3, cancelled=4).instances == 3
    assert cancel_queued_request(settings, instances=3, active=3, cancelled=1) is None
    launching = {"since": "2026-12-06T05:00:00.000Z"}
    assert queued_instances("/d/w", 2, launching) == []  # a task id comes in a moment
    stuck = launching | {"processedOffersSummary": {"rejectSummaryLastOffers": _steps(
        {"InsufficientPorts": 1}, 1)}}  # fmt: skip
    queued = queued_instances("/d/w", 2, stuck)
    assert [i.name for i in queued] == ["d_w.queued-0", "d_w.queued-1"]
    assert all(i.state is InstanceState.PENDING and i.reason for i in queued)
