"""The running scaler reads its configuration file again when it changes, and removes ended
instances on the tick it sees them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from dask_deploy import InstanceState
from dask_deploy.backends.fake import FakeBackend
from dask_deploy.config import load_config
from dask_deploy.policy import Hold
from dask_deploy.scaler import ConfigSource, Scaler, build_backend, build_policy
from dask_deploy.steps import Bounds
from loop_support import Clock, FakeScheduler


def write(path: Path, maximum: object, **extra: object) -> None:
    config = {
        "deployment": "d",
        "scheduler": {"address": "tcp://127.0.0.1:8786"},
        "policy": {"name": "adaptive", "minimum": 0, "maximum": maximum},
        "loop": {"interval": 1, "startup_timeout": 60},
        "backend": {"name": "fake"},
        **extra,
    }
    path.write_text(yaml.safe_dump(config))


def scaler_from(path: Path) -> tuple[Scaler, FakeScheduler]:
    config = load_config(path, environ={})
    scheduler = FakeScheduler()
    scaler = Scaler(
        scheduler=scheduler,
        backend=build_backend(config, "tcp://127.0.0.1:8786"),
        policy=build_policy(config.policy, config.loop.startup_timeout),
        policy_name=config.policy.name,
        bounds=Bounds(config.policy.minimum, config.policy.maximum),
        settings=config.loop,
        clock=Clock(),
    )
    scaler.config_source = ConfigSource(path, config, "tcp://127.0.0.1:8786")
    return scaler, scheduler


async def test_an_edited_maximum_applies_at_the_next_tick(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "scaler.yaml"
    write(path, 4)
    scaler, scheduler = scaler_from(path)
    scheduler.target = 8
    await scaler.tick()
    assert len(await scaler.backend.instances()) == 4
    write(path, 6)
    caplog.set_level(logging.INFO, logger="dask_deploy.scaler")
    await scaler.tick()
    assert scaler.bounds == Bounds(0, 6)
    assert len(await scaler.backend.instances()) == 6
    assert scaler.metrics.registry.get_sample_value("dask_deploy_policy_maximum_workers") == 6
    changed = [r.getMessage() for r in caplog.records if "configuration changed" in r.message]
    assert len(changed) == 1 and "policy.maximum: 4 -> 6" in changed[0], changed


async def test_an_invalid_edit_is_reported_once_and_the_running_configuration_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "scaler.yaml"
    write(path, 4)
    scaler, _ = scaler_from(path)
    backend = scaler.backend
    write(path, -1)
    caplog.set_level(logging.INFO, logger="dask_deploy.scaler")
    for _ in range(3):
        await scaler.tick()
    refused = [r for r in caplog.records if "not applied" in r.getMessage()]
    assert len(refused) == 1, caplog.text  # once per change, not every tick
    message = refused[0].getMessage()
    assert "\n" not in message
    assert "policy.maximum: got -1, expected an integer >= 0" in message
    assert "the running configuration stays" in message
    assert scaler.bounds == Bounds(0, 4) and scaler.backend is backend
    # Fixed again: applied.
    write(path, 2)
    await scaler.tick()
    assert scaler.bounds == Bounds(0, 2)


async def test_bad_backend_options_keep_the_running_backend(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "scaler.yaml"
    write(path, 4)
    scaler, _ = scaler_from(path)
    backend = scaler.backend
    write(path, 4, backend={"name": "fake", "options": {"fail": ["nonsense"]}})
    await scaler.tick()
    assert scaler.backend is backend
    assert "backend.options.fail: got ['nonsense']" in caplog.text


async def test_what_needs_a_restart_is_named_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "scaler.yaml"
    write(path, 4)
    scaler, _ = scaler_from(path)
    caplog.set_level(logging.INFO, logger="dask_deploy.scaler")
    write(path, 5, deployment="other")
    await scaler.tick()
    assert "not applied until the scaler restarts: deployment: 'd' -> 'other'" in caplog.text
    assert scaler.bounds == Bounds(0, 5)
    assert scaler.config_source is not None
    assert scaler.config_source.config.deployment == "d"


async def test_a_changed_worker_template_rebuilds_the_backend(tmp_path: Path) -> None:
    """A file a backend option names (here the local backend's interpreter, standing in for a
    worker template) is watched by content, like the configuration file."""
    template = tmp_path / "worker-pod.yaml"
    template.write_text("one\n")
    path = tmp_path / "scaler.yaml"
    write(
        path,
        4,
        backend={
            "name": "local",
            "options": {"python": str(template), "state_dir": str(tmp_path / "s")},
        },
    )
    scaler, _ = scaler_from(path)
    first = scaler.backend
    await scaler.tick()
    assert scaler.backend is first  # nothing changed
    template.write_text("two\n")
    await scaler.tick()
    assert scaler.backend is not first


def fake_scaler(backend: FakeBackend, scheduler: FakeScheduler) -> Scaler:
    overrides = {"backend.name": "fake", "scheduler.address": "tcp://127.0.0.1:8786"}
    config = load_config(overrides=overrides, environ={})
    return Scaler(
        scheduler=scheduler,
        backend=backend,
        policy=build_policy(config.policy, config.loop.startup_timeout),
        policy_name="adaptive",
        bounds=Bounds(0, 10),
        settings=config.loop,
        clock=Clock(),
    )


async def test_ended_instances_are_removed_on_the_next_tick_without_a_scale_action() -> None:
    clock = Clock()
    backend = FakeBackend("d", clock=clock)
    scheduler = FakeScheduler()
    backend.add("d-0", InstanceState.RUNNING, clock.now)
    backend.add("d-1", InstanceState.RUNNING, clock.now)
    backend.add("d-2", InstanceState.EXITED, clock.now)  # its worker still connected
    scheduler.connect("d-0")
    scheduler.connect("d-2")
    scheduler.target = 1  # d-0 is enough: the decision is a hold
    scaler = fake_scaler(backend, scheduler)
    backend.set_state("d-1", InstanceState.EXITED)  # ended; its worker is gone
    result = await scaler.tick()
    assert isinstance(result.decision, Hold)
    assert ("scale_down", ["d-1"]) in backend.calls
    assert {i.name for i in await backend.instances()} == {"d-0", "d-2"}
    backend.calls.clear()
    await scaler.tick()
    assert not [c for c in backend.calls if c[0] == "scale_down"]


async def test_a_dry_run_removes_nothing_ended() -> None:
    clock = Clock()
    backend = FakeBackend("d", clock=clock)
    backend.add("d-0", InstanceState.EXITED, clock.now)
    scaler = fake_scaler(backend, FakeScheduler())
    scaler.dry_run = True
    await scaler.tick()
    assert not [c for c in backend.calls if c[0] == "scale_down"]
