"""A worker the scheduler is retiring is not counted again: no second worker is retired for it."""

from __future__ import annotations

from dask_deploy.backends import Instance, InstanceState
from dask_deploy.backends.fake import FakeBackend
from dask_deploy.policy import (
    Hold,
    Observation,
    PolicySettings,
    ScaleDown,
    ScaleUp,
    WorkerSnapshot,
)
from dask_deploy.policy import load_policy_factory as policy_factory
from dask_deploy.steps import without_retiring


def observation(statuses: dict[str, str]) -> Observation:
    return Observation(
        workers=tuple(
            WorkerSnapshot(name, f"tcp://{name}", status, 1, 0, 10, 0)
            for name, status in statuses.items()
        ),
        instances=tuple(Instance(name, InstanceState.RUNNING, 0.0) for name in statuses),
        adaptive_target=2,
        tasks_processing=0,
        workers_to_close=tuple(statuses),
    )


def test_a_restarted_scaler_does_not_retire_a_second_worker_while_one_is_retiring() -> None:
    seen = observation({"d-0": "closing_gracefully", "d-1": "running", "d-2": "running"})
    fixed = policy_factory("fixed")(PolicySettings(minimum=2, maximum=3, options={"workers": 2}))
    # Counted as requested, the retiring worker makes the policy release another one.
    assert fixed.decide(seen, 1000.0) == ScaleDown(
        ("d-1",),
        "fixed at 2",
        {"target": 2, "requested": 3, "observed": 3, "pending": 0},
    )
    assert isinstance(fixed.decide(without_retiring(seen), 1000.0), Hold)


def test_without_retiring_keeps_running_and_paused_workers() -> None:
    seen = observation({"d-0": "running", "d-1": "paused"})
    assert without_retiring(seen) is seen
    left = without_retiring(observation({"d-0": "closing_gracefully", "d-1": "paused"}))
    assert [w.name for w in left.workers] == ["d-1"]
    assert [i.name for i in left.instances] == ["d-1"]


async def test_a_scale_up_during_a_retirement_waits_for_it_and_never_passes_the_maximum() -> None:
    backend = FakeBackend("d")
    await backend.scale_up(3)
    names = sorted(i.name for i in await backend.instances())
    seen = observation({names[0]: "closing_gracefully", names[1]: "running", names[2]: "running"})
    fixed = policy_factory("fixed")(PolicySettings(minimum=2, maximum=3, options={"workers": 3}))
    decision = fixed.decide(without_retiring(seen), 1000.0)
    assert decision == ScaleUp(3, decision.reason, decision.numbers)
    # The backend still holds the retiring worker's instance: nothing is added yet...
    await backend.scale_up(decision.n)
    assert len(await backend.instances()) == 3
    # ...and the replacement comes once the retired instance is gone.
    await backend.scale_down([names[0]])
    await backend.scale_up(decision.n)
    assert len(await backend.instances()) == 3
