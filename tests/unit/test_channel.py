"""The scaler's policy channel through the scheduler's metadata, with in-memory fakes."""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

import pytest

from dask_deploy import SettingsError
from dask_deploy.backends.fake import FakeBackend
from dask_deploy.channel import ChannelScaler, request_key, status_key, validate_request
from dask_deploy.config import LoopSettings, PolicyConfig
from dask_deploy.observe import SchedulerState
from dask_deploy.policy import PolicySettings, WorkerSnapshot
from dask_deploy.policy import load_policy_factory as policy_factory
from dask_deploy.steps import Bounds


class MetadataScheduler:
    """A scheduler link with the stock metadata store; workers never connect here."""

    def __init__(self) -> None:
        self.metadata: dict[tuple[str, ...], Any] = {}
        self.workers: tuple[WorkerSnapshot, ...] = ()

    async def observe(self, target_duration: float | None) -> SchedulerState:
        return SchedulerState(self.workers, 0, 0, 0, 0, ())

    async def worker_names(self) -> frozenset[str]:
        return frozenset()

    async def retire(self, names: Collection[str]) -> frozenset[str]:
        return frozenset()

    async def close(self) -> None:
        pass

    async def get_metadata(self, keys: list[str]) -> Any:
        return self.metadata.get(tuple(keys))

    async def set_metadata(self, keys: list[str], value: Any) -> None:
        self.metadata[tuple(keys)] = value


def make() -> tuple[ChannelScaler, MetadataScheduler, FakeBackend]:
    scheduler = MetadataScheduler()
    backend = FakeBackend("d")
    config = PolicyConfig(name="adaptive", minimum=0, maximum=4)
    scaler = ChannelScaler(
        deployment="d",
        policy_config=config,
        metadata=scheduler,
        scheduler=scheduler,
        backend=backend,
        policy=policy_factory("adaptive")(PolicySettings(minimum=0, maximum=4)),
        settings=LoopSettings(interval=1),
        policy_name="adaptive",
        bounds=Bounds(minimum=0, maximum=4),
    )
    return scaler, scheduler, backend


async def test_a_request_is_applied_on_the_next_tick_once_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scaler, scheduler, backend = make()
    await scaler.tick()
    assert scheduler.metadata[tuple(status_key("d"))]["policy"]["minimum"] == 0
    scheduler.metadata[tuple(request_key("d"))] = {
        "id": "r1",
        "policy": {"name": "fixed", "minimum": 2, "maximum": 2},
    }
    with caplog.at_level(logging.INFO, logger="dask_deploy.scaler"):
        await scaler.tick()
    assert "policy changed by request r1: fixed minimum=2 maximum=2" in caplog.text
    assert len(await backend.instances()) == 2  # decided with the new policy in the same tick
    status = scheduler.metadata[tuple(status_key("d"))]
    assert status["applied_request"] == "r1"
    assert status["policy"] == {"name": "fixed", "minimum": 2, "maximum": 2, "options": {}}
    assert [d["kind"] for d in status["decisions"]] == ["hold", "up"]
    assert scaler.metrics.policy_minimum._value.get() == 2
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dask_deploy.scaler"):
        await scaler.tick()
    assert "policy changed" not in caplog.text  # each request applies once


async def test_a_request_beyond_the_starting_bounds_moves_the_loops_bounds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scaler, scheduler, backend = make()  # started with maximum 4
    scheduler.metadata[tuple(request_key("d"))] = {
        "id": "wider",
        "policy": {"name": "fixed", "minimum": 7, "maximum": 7},
    }
    with caplog.at_level(logging.INFO, logger="dask_deploy.scaler"):
        await scaler.tick()
    assert len(await backend.instances()) == 7  # not clipped to the configuration's 4
    assert "clip" not in caplog.text
    assert "(policy fixed)" in caplog.text


async def test_an_invalid_request_is_refused_and_the_policy_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scaler, scheduler, _ = make()
    scheduler.metadata[tuple(request_key("d"))] = {
        "id": "bad",
        "policy": {"name": "adaptive", "minimum": 0, "maximum": -1},
    }
    await scaler.tick()
    assert "policy request bad refused: policy.maximum: got -1" in caplog.text
    status = scheduler.metadata[tuple(status_key("d"))]
    assert status["refused_request"]["id"] == "bad"
    assert status["policy"]["maximum"] == 4


def test_validate_request_gives_the_scaler_yaml_line() -> None:
    with pytest.raises(SettingsError) as error:
        validate_request({"name": "adaptive", "minimum": 0, "maximum": 3,
                          "options": {"growth_factor": 0.5}})  # fmt: skip
    assert str(error.value).startswith("policy.options.growth_factor: got 0.5")
    with pytest.raises(SettingsError, match=r"policy\.name: got 'adaptiv'"):
        validate_request({"name": "adaptiv"})


async def test_an_unreachable_scheduler_holds_at_once_without_a_second_wait() -> None:
    scaler, scheduler, backend = make()
    observed: list[float | None] = []

    async def unreachable(keys: list[str]) -> Any:
        raise OSError("connection refused")

    async def observe(target_duration: float | None) -> SchedulerState:
        observed.append(target_duration)
        raise OSError("connection refused")

    scheduler.get_metadata = unreachable  # type: ignore[method-assign]
    scheduler.observe = observe  # type: ignore[method-assign]
    result = await scaler.tick()
    assert not result.ok and "scheduler unreachable" in result.decision.reason
    assert observed == []  # one connect timeout per tick, not two
    assert scaler.metrics.scheduler_errors._value.get() == 1
    assert await backend.instances() == []
