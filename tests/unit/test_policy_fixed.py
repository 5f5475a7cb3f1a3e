"""The fixed policy and the policy registry."""

from __future__ import annotations

import pytest

from dask_deploy import Instance, InstanceState, SettingsError
from dask_deploy.policy import (
    Hold,
    Observation,
    Policy,
    PolicySettings,
    ScaleDown,
    ScaleUp,
    WorkerSnapshot,
    load_policy_factory,
    registry,
)


def fixed(workers: int, minimum: int = 0, maximum: int = 10) -> Policy:
    return load_policy_factory("fixed")(
        PolicySettings(minimum=minimum, maximum=maximum, options={"workers": workers})
    )


def snapshot(running: list[str], pending: list[str] = [], target: int = 0) -> Observation:  # noqa: B006
    workers = tuple(
        WorkerSnapshot(n, f"tcp://127.0.0.1:{i + 2000}", "running", 1, 0, 0, 0)
        for i, n in enumerate(running)
    )
    instances = tuple(Instance(n, InstanceState.RUNNING, 0) for n in running) + tuple(
        Instance(n, InstanceState.PENDING, 0) for n in pending
    )
    return Observation(workers, instances, target, 0, workers_to_close=tuple(running))


def test_fixed_keeps_exactly_n_whatever_the_load() -> None:
    policy = fixed(2)
    up = policy.decide(snapshot([], target=50), now=0)
    assert isinstance(up, ScaleUp) and up.n == 2
    hold = policy.decide(snapshot(["a", "b"], target=50), now=1)
    assert isinstance(hold, Hold)
    down = policy.decide(snapshot(["a", "b", "c"], pending=["d"]), now=2)
    assert isinstance(down, ScaleDown) and down.names == ("d", "a")


def test_fixed_count_must_lie_within_the_bounds() -> None:
    with pytest.raises(SettingsError) as raised:
        fixed(11)
    assert raised.value.key == "policy.options.workers"


def test_registry_is_sorted_and_rejects_unknown_names() -> None:
    assert registry.names()[:2] == ["adaptive", "fixed"]
    assert list(registry.builtin) == sorted(registry.builtin)
    with pytest.raises(SettingsError) as raised:
        load_policy_factory("magic")
    assert raised.value.key == "policy.name"
    assert "adaptive, fixed" in str(raised.value)
