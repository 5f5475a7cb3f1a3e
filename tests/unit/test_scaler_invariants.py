"""The loop keeps its promises whatever a plug-in policy answers: a misbehaving one proves it.

The policy ``greedy`` is installed through the entry point like any third-party plug-in; it
asks for ``maximum + 10`` workers, names workers the backend never launched, or asks to
release every worker. Each test reads the scaler's log the way a user would.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest

from dask_deploy import Hold, InstanceState, ScaleDown, ScaleUp
from dask_deploy.backends.fake import FakeBackend
from dask_deploy.config import parse_config
from dask_deploy.scaler import Scaler, build_scaler
from loop_support import FakeScheduler

GREEDY = """
from dask_deploy import Hold, ScaleDown, ScaleUp


class Greedy:
    target_duration = None

    def __init__(self, settings):
        self.settings = settings
        self.wants = settings.options.get("wants", "more")
        self.name = settings.options.get("name", "")

    def decide(self, observation, now):
        if self.wants == "more":
            return ScaleUp(self.settings.maximum + 10, "more is better")
        if self.wants == "this":
            return ScaleDown(tuple(self.name.split(",")), "that one has to go")
        if self.wants == "nothing":
            names = tuple(i.name for i in observation.requested)
            return ScaleDown(names, "nothing is better")
        return Hold("content")


def create(settings):
    return Greedy(settings)
"""

MAXIMUM = 4


@pytest.fixture(autouse=True)
def greedy_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dd_greedy_policy.py").write_text(GREEDY)
    info = tmp_path / "dd_greedy_policy-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dd-greedy-policy\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [dask_deploy.policies]
            greedy = dd_greedy_policy:create
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))


def greedy_scaler(options: dict[str, object], *, minimum: int = 0) -> Scaler:
    config = parse_config(
        {
            "deployment": "d",
            "scheduler": {"address": "tcp://127.0.0.1:8786"},
            "policy": {
                "name": "greedy",
                "minimum": minimum,
                "maximum": MAXIMUM,
                "options": options,
            },
            "loop": {"startup_timeout": 1000},
            "backend": {"name": "fake"},
        }
    )
    scaler = build_scaler(config, address="tcp://127.0.0.1:8786")
    scaler.scheduler = FakeScheduler()
    return scaler


def fake(scaler: Scaler) -> tuple[FakeBackend, FakeScheduler]:
    assert isinstance(scaler.backend, FakeBackend)
    assert isinstance(scaler.scheduler, FakeScheduler)
    return scaler.backend, scaler.scheduler


async def running(scaler: Scaler, count: int) -> None:
    """``count`` instances of ours, running and connected."""
    backend, scheduler = fake(scaler)
    await backend.scale_up(count)
    for instance in await backend.instances():
        backend.set_state(instance.name, InstanceState.RUNNING)
        scheduler.connect(instance.name)
    backend.calls.clear()


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dask_deploy.scaler"]


async def test_a_scale_up_past_the_maximum_is_clipped_and_the_log_names_the_policy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dask_deploy.scaler")
    scaler = greedy_scaler({"wants": "more"})
    backend, _ = fake(scaler)
    result = await scaler.tick()
    assert result.decision == ScaleUp(MAXIMUM, "more is better")
    assert backend.calls == [("instances", None), ("scale_up", MAXIMUM)]
    assert len(await backend.instances()) == MAXIMUM
    log = lines(caplog)
    assert (
        f"policy greedy asked to scale up to {MAXIMUM + 10}; clipped to {MAXIMUM} "
        f"(policy.maximum={MAXIMUM})"
    ) in log
    assert f"scale up to {MAXIMUM}: more is better (policy greedy)" in log
    # At the maximum, asking again changes nothing.
    backend.calls.clear()
    again = await scaler.tick()
    assert isinstance(again.decision, Hold)
    assert ("scale_up", MAXIMUM) not in backend.calls and len(await backend.instances()) == MAXIMUM


async def test_a_foreign_worker_named_by_the_policy_is_refused_and_never_retired(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dask_deploy.scaler")
    scaler = greedy_scaler({"wants": "this", "name": "someone-elses"})
    backend, scheduler = fake(scaler)
    await running(scaler, 2)
    scheduler.connect("someone-elses")  # a worker started by hand, not by this backend
    result = await scaler.tick()
    assert isinstance(result.decision, Hold)
    assert scheduler.retire_calls == []
    assert not any(call[0] == "scale_down" for call in backend.calls)
    assert "someone-elses" in scheduler.connected
    assert (
        "policy greedy named someone-elses: not an instance this backend launched "
        "(or already retiring); refused"
    ) in lines(caplog)


async def test_of_a_mixed_list_only_our_instances_are_retired(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dask_deploy.scaler")
    scaler = greedy_scaler({"wants": "this", "name": "someone-elses,d-1"})
    backend, scheduler = fake(scaler)
    await running(scaler, 2)
    scheduler.connect("someone-elses")
    result = await scaler.tick()
    assert result.decision == ScaleDown(("d-1",), "that one has to go")
    assert scheduler.retire_calls == [["d-1"]]
    assert ("scale_down", ["d-1"]) in backend.calls
    assert "someone-elses" in scheduler.connected
    assert sorted(i.name for i in await backend.instances()) == ["d-0"]
    assert "scale down d-1: that one has to go (policy greedy)" in lines(caplog)


async def test_only_workers_the_scheduler_retired_leave_the_backend(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dask_deploy.scaler")
    scaler = greedy_scaler({"wants": "this", "name": "d-0,d-1"})
    backend, scheduler = fake(scaler)
    await running(scaler, 2)
    scheduler.refuse = {"d-0"}  # its data has nowhere to go
    await scaler.tick()
    assert scheduler.retire_calls == [["d-0", "d-1"]]
    assert ("scale_down", ["d-1"]) in backend.calls
    assert sorted(i.name for i in await backend.instances()) == ["d-0"]
    assert any("scheduler did not retire d-0" in line for line in lines(caplog))


async def test_a_scale_down_below_the_minimum_is_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dask_deploy.scaler")
    scaler = greedy_scaler({"wants": "nothing"}, minimum=1)
    backend, _ = fake(scaler)
    await running(scaler, 3)
    result = await scaler.tick()
    assert result.decision == ScaleDown(("d-0", "d-1"), "nothing is better")
    assert len(await backend.instances()) == 1
    assert "policy greedy asked to release 3 of 3; limited to 2 (policy.minimum=1)" in lines(caplog)
