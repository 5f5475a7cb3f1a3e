"""The control loop with the fake backend and an in-memory scheduler link."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path

import pytest

from dask_deploy import InstanceState, UserInputError
from dask_deploy.backends.fake import FakeBackend
from dask_deploy.config import LoopSettings, SchedulerSettings
from dask_deploy.contract import Instance, ReasonKind
from dask_deploy.observe import wait_for_address
from dask_deploy.policy import Hold, PolicySettings, ScaleDown, ScaleUp
from dask_deploy.policy import load_policy_factory as policy_factory
from dask_deploy.scaler import Scaler
from dask_deploy.steps import Bounds
from loop_support import Clock, FakeScheduler


def make(
    *, window: float = 0, startup_timeout: float = 60, maximum: int = 10, dry_run: bool = False
) -> tuple[Scaler, FakeScheduler, FakeBackend, Clock]:
    clock = Clock()
    scheduler = FakeScheduler()
    backend = FakeBackend("d", clock=clock)
    policy = policy_factory("adaptive")(
        PolicySettings(
            minimum=0,
            maximum=maximum,
            startup_timeout=startup_timeout,
            options={"scale_down_window": window},
        )
    )
    settings = LoopSettings(interval=1, startup_timeout=startup_timeout)
    scaler = Scaler(
        scheduler=scheduler,
        backend=backend,
        policy=policy,
        policy_name="adaptive",
        bounds=Bounds(0, maximum),
        settings=settings,
        clock=clock,
        dry_run=dry_run,
    )
    return scaler, scheduler, backend, clock


async def test_scale_up_asks_the_backend_for_the_total() -> None:
    scaler, scheduler, backend, _ = make()
    scheduler.target = 3
    result = await scaler.tick()
    assert isinstance(result.decision, ScaleUp)
    assert ("scale_up", 3) in backend.calls
    assert len(await backend.instances()) == 3


async def test_scale_down_cancels_pending_then_retires_and_removes_only_retired() -> None:
    scaler, scheduler, backend, clock = make(startup_timeout=1000)
    scheduler.target = 3
    await scaler.tick()
    for name in ("d-0", "d-1"):
        backend.set_state(name, InstanceState.RUNNING)
        scheduler.connect(name)
    scheduler.refuse = {"d-1"}  # holds data that has nowhere to go
    clock.now += 2000  # past pending protection
    scheduler.target = 0
    backend.calls.clear()
    result = await scaler.tick()
    assert isinstance(result.decision, ScaleDown)
    assert backend.calls[1] == ("scale_down", ["d-2"])  # pending first, before any retirement
    assert scheduler.retire_calls == [["d-0", "d-1"]]
    assert backend.calls[2] == ("scale_down", ["d-0"])  # only what the scheduler retired
    assert {i.name for i in await backend.instances()} == {"d-1"}
    assert scaler.metrics.registry.get_sample_value("dask_deploy_retire_failures_total") == 1
    # The refused worker is not asked again at every tick...
    scheduler.retire_calls.clear()
    held = await scaler.tick()
    assert isinstance(held.decision, Hold) and "refused" in held.decision.reason
    assert scheduler.retire_calls == []
    # ...but again once the retry delay has passed (its data may have a place by then).
    clock.now += 31
    await scaler.tick()
    assert scheduler.retire_calls == [["d-1"]]


async def test_nothing_is_scaled_down_while_the_scheduler_is_unreachable() -> None:
    scaler, scheduler, backend, _ = make()
    backend.add("d-0", InstanceState.RUNNING, 1000)
    scheduler.reachable = False
    result = await scaler.tick()
    assert isinstance(result.decision, Hold) and "unreachable" in result.decision.reason
    assert not result.ok
    assert [c for c in backend.calls if c[0] != "instances"] == []
    assert scaler.next_delay(result.ok) == 1  # a short outage is retried at the interval


async def test_backend_errors_are_retried_at_the_interval_then_with_backoff() -> None:
    scaler, scheduler, backend, clock = make()
    backend.fail = {"scale_up"}
    scheduler.target = 2
    delays = []
    for elapsed in (0, 1, 29, 40, 100, 1000):
        clock.now = 1000 + elapsed
        result = await scaler.tick()
        delays.append(scaler.next_delay(result.ok))
    # Within 30 s of the first failure, the interval; then half the outage, at most 30 s.
    assert delays == [1, 1, 1, 20, 30, 30]
    backend.fail = set()
    result = await scaler.tick()
    assert result.ok and scaler.next_delay(result.ok) == 1
    assert scaler.metrics.registry.get_sample_value("dask_deploy_backend_errors_total") == 6
    # A new outage starts its prompt window afresh.
    backend.fail = {"scale_up"}
    scheduler.target = 3
    result = await scaler.tick()
    assert not result.ok and scaler.next_delay(result.ok) == 1


async def test_instances_that_never_connect_are_replaced() -> None:
    scaler, scheduler, backend, clock = make(startup_timeout=60)
    scheduler.target = 1
    await scaler.tick()
    clock.now += 61
    await scaler.tick()
    names = [i.name for i in await backend.instances()]
    assert names == ["d-1"]  # d-0 removed, a fresh one requested
    assert ("scale_down", ["d-0"]) in backend.calls


UNSCHEDULABLE = "Unschedulable: 0/3 nodes are available: 3 Insufficient cpu."


async def test_instances_stuck_for_a_reason_are_kept_and_no_more_are_asked_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scaler, scheduler, backend, clock = make(startup_timeout=60)
    scheduler.target = 2
    await scaler.tick()
    scheduler.connect("d-0")
    backend.set_reason("d-1", UNSCHEDULABLE)
    scheduler.target = 4
    caplog.set_level(logging.INFO, logger="dask_deploy.scaler")
    for _ in range(5):
        clock.now += 61
        result = await scaler.tick()
        assert isinstance(result.decision, Hold), result.decision
    assert sorted(i.name for i in await backend.instances()) == ["d-0", "d-1"]
    assert not [call for call in backend.calls if call[0] == "scale_down"]
    assert "scale-up to 4 held" in result.decision.reason
    assert UNSCHEDULABLE in result.decision.reason
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cannot start")]
    assert said == [
        f"cannot start d-1: {UNSCHEDULABLE}; not replacing them, and no more are asked for "
        "meanwhile"
    ]
    assert scaler.metrics.stuck._value.get() == 1

    # Released (capacity came): the pod gets a full startup timeout from now, and more follow.
    backend.set_reason("d-1", None)
    clock.now += 1
    result = await scaler.tick()
    assert isinstance(result.decision, ScaleUp) and result.decision.n == 4
    assert "d-1" in {i.name for i in await backend.instances()}
    assert any("d-1 no longer held back" in r.getMessage() for r in caplog.records)


async def test_unknown_workers_are_left_alone_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    scaler, scheduler, _backend, _ = make()
    scheduler.connect("someone-elses")
    with caplog.at_level(logging.INFO, logger="dask_deploy.scaler"):
        await scaler.tick()
        await scaler.tick()
    assert sum("someone-elses" in r.message for r in caplog.records) == 1
    assert scheduler.retire_calls == []


async def test_restarted_scaler_converges_without_duplicates() -> None:
    scaler, scheduler, backend, _ = make()
    scheduler.target = 4
    await scaler.tick()
    # A new scaler process with fresh policy memory, same backend state.
    again, *_ = make()
    again.backend = backend
    again.scheduler = scheduler
    for _ in range(3):
        await again.tick()
    assert len(await backend.instances()) == 4


async def test_dry_run_logs_decisions_without_acting(caplog: pytest.LogCaptureFixture) -> None:
    scaler, scheduler, backend, _ = make(dry_run=True)
    scheduler.target = 2
    with caplog.at_level(logging.INFO, logger="dask_deploy.scaler"):
        await scaler.tick()
    assert await backend.instances() == []
    assert any("[dry-run] scale up to 2" in r.message for r in caplog.records)


async def test_run_stops_on_the_event_and_cleans_up() -> None:
    scaler, scheduler, backend, _ = make()
    scaler.settings = LoopSettings(interval=0.01, startup_timeout=60, cleanup_on_exit=True)
    scheduler.target = 2
    stop = asyncio.Event()
    task = asyncio.create_task(scaler.run(stop))
    for _ in range(100):
        if len(await backend.instances()) == 2:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert await backend.instances() == []


async def test_a_restarted_scaler_gives_old_unconnected_instances_a_full_timeout() -> None:
    scaler, scheduler, backend, clock = make(startup_timeout=60)
    scheduler.target = 1
    backend.add("d-0", InstanceState.PENDING, requested_at=clock.now - 3600)
    await scaler.tick()
    assert ("scale_down", ["d-0"]) not in backend.calls
    clock.now += 61
    await scaler.tick()
    assert ("scale_down", ["d-0"]) in backend.calls


async def test_a_worker_that_disconnects_is_not_a_startup_failure_at_once() -> None:
    scaler, scheduler, backend, clock = make(startup_timeout=60)
    scheduler.target = 1
    await scaler.tick()
    scheduler.connect("d-0")
    clock.now += 600
    await scaler.tick()
    del scheduler.connected["d-0"]  # e.g. the scheduler restarted
    clock.now += 30
    await scaler.tick()
    assert ("scale_down", ["d-0"]) not in backend.calls
    clock.now += 31
    await scaler.tick()
    assert ("scale_down", ["d-0"]) in backend.calls


async def test_the_scheduler_file_is_awaited_until_written(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.json"
    settings = SchedulerSettings(scheduler_file=str(path))

    async def write_later() -> None:
        await asyncio.sleep(0.3)
        path.write_text(json.dumps({"address": "tcp://127.0.0.1:9999"}))

    writer = asyncio.create_task(write_later())
    assert await wait_for_address(settings, timeout=10) == "tcp://127.0.0.1:9999"
    await writer


async def test_a_scheduler_file_never_written_is_a_clear_error(tmp_path: Path) -> None:
    settings = SchedulerSettings(scheduler_file=str(tmp_path / "missing.json"))
    with pytest.raises(UserInputError, match=r"scheduler\.scheduler_file: no scheduler address"):
        await wait_for_address(settings, timeout=0.2)


async def test_the_loop_counts_its_ticks_for_liveness_checks() -> None:
    scaler, scheduler, _, _ = make()
    scaler.settings = LoopSettings(interval=0.01, startup_timeout=60)
    scheduler.target = 1
    stop = asyncio.Event()
    running = asyncio.create_task(scaler.run(stop))
    while not scaler.metrics.registry.get_sample_value("dask_deploy_ticks_total"):
        await asyncio.sleep(0.01)
    stop.set()
    await running
    assert scaler.metrics.registry.get_sample_value("dask_deploy_ticks_total") >= 1


async def test_failed_scale_down_calls_are_counted_against_whoever_failed() -> None:
    scaler, scheduler, backend, clock = make(startup_timeout=1000)
    scheduler.target = 1
    await scaler.tick()
    backend.set_state("d-0", InstanceState.RUNNING)
    scheduler.connect("d-0")
    clock.now += 2000
    scheduler.target = 0

    async def retire_times_out(names: Collection[str]) -> frozenset[str]:
        raise TimeoutError("retire_workers took too long")

    async def removal_times_out(names: Collection[str]) -> None:
        raise TimeoutError("the resource manager did not answer")

    def errors() -> tuple[float | None, float | None]:
        sample = scaler.metrics.registry.get_sample_value
        return sample("dask_deploy_scheduler_errors_total"), sample(
            "dask_deploy_backend_errors_total"
        )

    original_retire = scheduler.retire
    scheduler.retire = retire_times_out  # type: ignore[method-assign]
    assert not (await scaler.tick()).ok
    assert errors() == (1, 0)
    scheduler.retire = original_retire  # type: ignore[method-assign]
    backend.scale_down = removal_times_out  # type: ignore[method-assign]
    assert not (await scaler.tick()).ok
    assert errors() == (1, 1)


class QueueBackend(FakeBackend):
    """A fake batch backend: its pending instances wait in a queue for a reason (``reasons``)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__("d", clock=clock)
        self.reasons: dict[str, str] = {}

    async def instances(self) -> list[Instance]:
        return [
            replace(i, reason=self.reasons[i.name], reason_kind=ReasonKind.QUEUED)
            if i.state is InstanceState.PENDING and i.name in self.reasons
            else i
            for i in await super().instances()
        ]


async def test_a_job_waiting_in_the_queue_is_never_replaced_for_being_slow(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scaler, scheduler, _, clock = make(startup_timeout=60)
    backend = QueueBackend(clock)
    scaler.backend = backend
    scheduler.target = 1
    await scaler.tick()
    backend.reasons["d-0"] = "Resources"
    with caplog.at_level(logging.INFO, logger="dask_deploy.scaler"):
        for _ in range(10):  # ten minutes in the queue
            clock.now += 60
            await scaler.tick()
    assert not [call for call in backend.calls if call[0] == "scale_down"]
    assert [i.name for i in await backend.instances()] == ["d-0"]
    assert sum("d-0 waits in the queue: Resources" in r.message for r in caplog.records) == 1


async def test_startup_timeout_counts_from_when_a_queued_job_started() -> None:
    scaler, scheduler, _, clock = make(startup_timeout=60)
    backend = QueueBackend(clock)
    scaler.backend = backend
    scheduler.target = 1
    await scaler.tick()
    backend.reasons["d-0"] = "Priority"
    clock.now += 3600
    await scaler.tick()
    del backend.reasons["d-0"]  # it starts running, its worker does not register
    backend.set_state("d-0", InstanceState.RUNNING)
    clock.now += 59
    await scaler.tick()
    assert ("scale_down", ["d-0"]) not in backend.calls
    clock.now += 2
    await scaler.tick()
    assert ("scale_down", ["d-0"]) in backend.calls


class WalltimeBackend(FakeBackend):
    """A fake batch backend whose instances end at a walltime: ``ends`` names leaving ones."""

    def __init__(self, clock: Clock) -> None:
        super().__init__("d", clock=clock)
        self.due: dict[str, float] = {}

    def leave(self, name: str, due_at: float) -> None:
        """The instance is near its walltime: reported gone, retire it by ``due_at``."""
        self.due[name] = due_at
        self.set_state(name, InstanceState.EXITED)

    def leaving(self) -> dict[str, float]:
        return {n: t for n, t in self.due.items() if n in self._instances}

    async def scale_down(self, names: Collection[str]) -> None:
        await super().scale_down(names)
        for name in names:
            self.due.pop(name, None)


def walltime_scaler() -> tuple[Scaler, FakeScheduler, WalltimeBackend, Clock]:
    scaler, scheduler, _, clock = make(startup_timeout=600)
    backend = WalltimeBackend(clock)
    scaler.backend = backend
    return scaler, scheduler, backend, clock


async def test_a_leaving_worker_is_retired_once_its_replacement_registered() -> None:
    scaler, scheduler, backend, clock = walltime_scaler()
    scheduler.target = 1
    await scaler.tick()
    scheduler.connect("d-0", processing=1)
    backend.set_state("d-0", InstanceState.RUNNING)
    backend.leave("d-0", due_at=clock.now + 300)
    await scaler.tick()  # requests d-1, keeps d-0 working
    assert scheduler.retire_calls == []
    clock.now += 60
    scheduler.connect("d-1")
    await scaler.tick()
    assert scheduler.retire_calls == [["d-0"]]
    assert [i.name for i in await backend.instances()] == ["d-1"]


async def test_a_leaving_worker_without_replacement_is_retired_at_the_last_safe_moment(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scaler, scheduler, backend, clock = walltime_scaler()
    scheduler.target = 1
    await scaler.tick()
    scheduler.connect("d-0", processing=1)
    backend.leave("d-0", due_at=clock.now + 300)
    await scaler.tick()  # d-1 requested; it waits in the queue
    clock.now += 299
    await scaler.tick()
    assert scheduler.retire_calls == []
    clock.now += 1
    with caplog.at_level(logging.INFO, logger="dask_deploy.scaler"):
        await scaler.tick()
    assert scheduler.retire_calls == [["d-0"]]
    assert any("handing over d-0 without a replacement" in r.message for r in caplog.records)


async def test_an_idle_leaving_worker_is_retired_at_once() -> None:
    scaler, scheduler, backend, clock = walltime_scaler()
    scheduler.target = 1
    await scaler.tick()
    scheduler.connect("d-0")
    backend.leave("d-0", due_at=clock.now + 3000)
    await scaler.tick()
    assert scheduler.retire_calls == [["d-0"]]


async def test_leaving_workers_without_replacements_are_handed_over_one_at_a_time() -> None:
    scaler, scheduler, backend, clock = walltime_scaler()
    scheduler.target = 2
    await scaler.tick()
    for name in ("d-0", "d-1"):
        scheduler.connect(name, processing=1)
        backend.leave(name, due_at=clock.now + 300)
    clock.now += 300
    await scaler.tick()
    assert scheduler.retire_calls == [["d-0"]]


async def test_a_refused_last_moment_handover_is_asked_again_at_the_next_tick() -> None:
    scaler, scheduler, backend, clock = walltime_scaler()
    scheduler.target = 1
    await scaler.tick()
    scheduler.connect("d-0", processing=1)
    backend.leave("d-0", due_at=clock.now + 10)
    scheduler.refuse.add("d-0")  # its data has nowhere to go yet
    clock.now += 10
    await scaler.tick()
    scheduler.refuse.clear()
    clock.now += 1
    await scaler.tick()
    assert scheduler.retire_calls == [["d-0"], ["d-0"]]
    assert "d-0" not in [i.name for i in await backend.instances()]
