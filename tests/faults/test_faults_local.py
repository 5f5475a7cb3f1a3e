"""Faults against the local backend: scaler, worker and scheduler kills while it scales down.

One real scheduler in the test's event loop, on a fixed port, with the fault ledger
(tests/faults/ledger_preload.py) booking every lost result against the worker it was lost
with; ``dask-deploy scale`` as a subprocess with the local backend, a fixed target that flips
between MINIMUM and MAXIMUM, and its metrics endpoint (the tick counter); a client holding
results spread over every worker. The faults come in cycles of five:

- ``scaler-sigkill``: the scaler is SIGKILLed at a random point of its loop and restarted with
  the other target (MINIMUM -> MAXIMUM: one worker is launched);
- ``worker-sigkill`` at MAXIMUM: the count stays in bounds;
- ``scaler-sigkill-retiring``: the scaler restarted with MINIMUM asks the scheduler to retire a
  worker holding results and is SIGKILLed at a random point of that retirement (or right
  after it), then restarted again; exactly one worker must go, and its results must not;
- every fourth cycle, ``scaler-sigkill-long-retirement`` instead: each worker holds a result
  that takes MOVE_SECONDS to move, so the restarted scaler finds the worker still retiring
  (closing_gracefully) and must not retire a second one;
- ``worker-sigkill`` at MINIMUM: the count drops below the minimum and must be back within
  two scaler ticks of the killed process being gone;
- ``scheduler-restart``: every connection of the scheduler drops at once and a new scheduler
  listens on the same port. distributed 2026.8.0 workers do not reconnect: a worker whose
  scheduler stream breaks closes itself (the workers run without a nanny), so the fault is
  over when the new scheduler listens and every old worker either registered with it (one
  still booting) or its process is gone. The held results are gone with the scheduler: they
  are counted as lost (never as lost from a removed worker) and submitted again.

After every fault: every lost result was lost with a worker this test SIGKILLed (the ledger),
the count never exceeds MAXIMUM, it is back within [MINIMUM, MAXIMUM] within
MAX_TICKS_TO_BOUNDS ticks of the fault being over (tests/faults/tally.py), the deployment is
back at its target with every worker connected, and every held result is right. At the end, a
control removes a worker holding results without retiring it: the ledger must book them, so
its zero is not blindness.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from ballast import heavy
from bounds import BoundsWatch, fixed_policy, scaler_metrics_up, scaler_ticks
from distributed import Client, Future, Scheduler, wait
from ledger_preload import dask_setup as install_ledger
from scaler_support import Deployment, ScalerProcess, slow

from dask_deploy.scheduler_preload import dask_setup as install_counts
from process_support import free_port
from tally import TALLY, FaultRecord

pytestmark = [pytest.mark.faults, pytest.mark.integration]

MINIMUM, MAXIMUM = 2, 3
CYCLE = (
    "scaler-sigkill",
    "worker-sigkill",
    "scaler-sigkill-retiring",
    "worker-sigkill",
    "scheduler-restart",
)
CYCLES = 12
INTERVAL = 0.5
#: New results pinned to each connected worker after every fault, so every worker the scaler
#: retires holds some; the oldest are released beyond HELD_LIMIT.
KEYS_PER_WORKER = 2
HELD_LIMIT = 36
RECOVERY_TIMEOUT = 60.0
#: Every fourth cycle the retirement is long (each worker holds a result that takes this long
#: to move, tests/faults/ballast.py), so the restarted scaler finds the worker still retiring.
LONG_RETIREMENT_EVERY = 4
#: The restarted scaler must be up (Python, dask and distributed imported, metrics served)
#: before the move ends: that can take 3 s on a loaded 2-core machine.
MOVE_SECONDS = 6.0


class SchedulerHost:
    """The scheduler in the test's event loop, on one fixed port, with the fault ledger.

    ``crash`` and ``start`` restart it on the same port, the way a scheduler pod or job is
    restarted behind an unchanged address; the scaler's configuration keeps pointing at it.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.current: Scheduler | None = None

    @property
    def scheduler(self) -> Scheduler:
        assert self.current is not None, "no scheduler is running"
        return self.current

    async def start(self) -> Scheduler:
        """A new scheduler on the same port, with both preloads a production one gets."""
        scheduler = Scheduler(
            host="127.0.0.1", port=self.port, dashboard=False, dashboard_address="127.0.0.1:0"
        )
        await scheduler
        install_counts(scheduler)
        install_ledger(scheduler)
        self.current = scheduler
        return scheduler

    async def crash(self) -> None:
        """Drop every connection at once (as a killed process would), then stop listening."""
        scheduler = self.scheduler
        for comm in [*scheduler.stream_comms.values(), *scheduler.client_comms.values()]:
            comm.abort()
        await scheduler.close(reason="fault-suite-crash")
        self.current = None

    def ledger(self) -> dict[str, Any]:
        """The ledger's report: ``{"lost_from": {name: [keys]}, "computed": {key: times}}``."""
        report: dict[str, Any] = self.scheduler.handlers["fault_ledger"]()
        return report


class FaultDeployment(Deployment):
    """The integration harness's deployment with an interval, metrics and a worker timeout."""

    def __init__(
        self, host: SchedulerHost, tmp: Path, *, interval: float, death_timeout: float
    ) -> None:
        super().__init__(host.scheduler, tmp)
        self.host = host
        self.interval = interval
        self.death_timeout = death_timeout
        self.metrics_port = free_port()

    def write_config(self, **policy: Any) -> Path:
        config = {
            "deployment": "faults",
            "scheduler": {"address": f"tcp://127.0.0.1:{self.host.port}"},
            "policy": policy,
            "loop": {"interval": self.interval, "startup_timeout": 60, "cleanup_on_exit": False},
            "metrics": {"host": "127.0.0.1", "port": self.metrics_port},
            "backend": {
                "name": "local",
                "options": {
                    "state_dir": str(self.state_dir),
                    "memory_limit": "512MiB",
                    "death_timeout": self.death_timeout,
                    "worker_args": ["--no-nanny"],  # not under test; halves a worker's boot
                },
            },
        }
        path = self.tmp / f"scaler-{len(self.scalers)}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def connected(self) -> set[str]:
        """Names of the workers connected to the current scheduler (none while it is down)."""
        if self.host.current is None:
            return set()
        return {str(ws.name) for ws in self.host.current.workers.values()}


@pytest.fixture
async def scheduler_host() -> AsyncIterator[SchedulerHost]:
    host = SchedulerHost(free_port())
    await host.start()
    try:
        yield host
    finally:
        if host.current is not None:
            await host.current.close()


@pytest.fixture
async def deployment(
    scheduler_host: SchedulerHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[FaultDeployment]:
    # The workers inherit the scaler's environment: let them import tests/faults/ballast.py.
    here = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    deployed = FaultDeployment(scheduler_host, tmp_path, interval=INTERVAL, death_timeout=20.0)
    try:
        yield deployed
    finally:
        await deployed.teardown()


def fixed(workers: int, minimum: int = MINIMUM) -> dict[str, Any]:
    return fixed_policy(workers, minimum=minimum, maximum=MAXIMUM)


class RetireWatch:
    """Wraps the scheduler's ``retire_workers`` handler: records what it retired and moved.

    When armed with ``kill``, calls it at a random point of the next retirement or right after
    it: the point is drawn from 0 to ``kill_within`` seconds, by default 1.5 times the previous
    retirement's duration.
    """

    def __init__(self, chooser: random.Random) -> None:
        self.chooser = chooser
        self.retired: list[str] = []
        self.keys_moved = 0
        self.kill: Callable[[], None] | None = None
        self.kills_during = self.kills_after = 0
        self.last_duration = 0.05
        self.kill_within: float | None = None
        self.in_flight = 0

    def install(self, scheduler: Scheduler) -> None:
        original = scheduler.retire_workers

        async def retire_workers(**message: Any) -> Any:
            names = set(message.get("names") or ())
            self.keys_moved += sum(
                len(ws.has_what) for ws in scheduler.workers.values() if ws.name in names
            )
            started = time.monotonic()
            self.in_flight += 1
            retiring = asyncio.ensure_future(original(**message))

            def done(_: object) -> None:
                self.in_flight -= 1
                self.last_duration = time.monotonic() - started

            retiring.add_done_callback(done)
            if self.kill is not None:
                kill, self.kill = self.kill, None
                within = self.kill_within or 1.5 * self.last_duration
                point = self.chooser.uniform(0, within)
                await asyncio.wait({retiring}, timeout=point)
                kill()
                if retiring.done():
                    self.kills_after += 1
                else:
                    self.kills_during += 1
            reply = await retiring
            self.retired.extend(str(info.get("name", address)) for address, info in reply.items())
            return reply

        scheduler.handlers["retire_workers"] = retire_workers


def lost_since(before: dict[str, list[str]], after: dict[str, list[str]]) -> dict[str, list[str]]:
    """Per worker name, the keys the ledger booked between two reports."""
    return {
        name: keys[len(before.get(name, [])) :]
        for name, keys in after.items()
        if len(keys) > len(before.get(name, []))
    }


async def ledger_catches_a_removal_without_retirement(
    scheduler: Scheduler, held: dict[int, Future]
) -> None:
    """Control: a worker removed without retirement is booked with the results it took.

    Without it, "0 keys lost from removed workers" could be the ledger's blindness.
    """
    report: Callable[[], dict[str, Any]] = scheduler.handlers["fault_ledger"]
    before = report()["lost_from"]
    holder = max(scheduler.workers.values(), key=lambda ws: len(ws.has_what))
    holding = {str(ts.key) for ts in holder.has_what}
    assert holding, "no worker holds a result"
    await scheduler.remove_worker(holder.address, stimulus_id="fault-suite-control")
    lost = lost_since(before, report()["lost_from"])
    assert set(lost.get(str(holder.name), [])) == holding, (
        f"the ledger booked {lost} for a removal of {holder.name} holding {sorted(holding)}"
    )
    assert {str(future.key) for future in held.values()} >= holding


async def test_scaler_worker_and_scheduler_kills_during_scale_down_lose_nothing(
    deployment: FaultDeployment, scheduler_host: SchedulerHost
) -> None:
    chooser = random.Random(20261128)
    retirements = RetireWatch(chooser)
    retirements.install(scheduler_host.scheduler)
    target = MINIMUM
    scaler = deployment.start_scaler(**fixed(target))
    held: dict[int, Future] = {}
    next_argument = 0
    found_still_retiring = 0

    def new_watch() -> BoundsWatch:
        return BoundsWatch(
            MINIMUM,
            MAXIMUM,
            live_instances=lambda: len(deployment.processes()),
            ticks=lambda: scaler_ticks(deployment.metrics_port),
        )

    def polled(watch: BoundsWatch, check: Callable[[], bool]) -> Callable[[], bool]:
        """``check`` that also polls the bounds and fails on a count above the maximum."""

        def poll() -> bool:
            watch.in_bounds()
            running = deployment.processes()
            assert len(running) <= MAXIMUM, (
                f"more instances than the maximum: {sorted(running)}\n{deployment.logs()}"
            )
            return check()

        return poll

    async def converge(watch: BoundsWatch) -> float:
        """Seconds until exactly ``target`` workers run, all connected, none retiring."""
        started = time.monotonic()

        def at_target() -> bool:
            running = set(deployment.processes())
            return (
                len(running) == target
                and deployment.connected() == running
                and retirements.in_flight == 0
            )

        await deployment.wait_for(
            f"the deployment is back at {target} connected workers",
            polled(watch, at_target),
            RECOVERY_TIMEOUT,
        )
        return time.monotonic() - started

    async def top_up(client: Client) -> None:
        """Pin new results to every connected worker; release the oldest beyond the limit."""
        nonlocal next_argument
        for name in sorted(deployment.connected()):
            for _ in range(KEYS_PER_WORKER):
                held[next_argument] = client.submit(
                    slow, next_argument, delay=0.0, workers=[name], allow_other_workers=True
                )
                next_argument += 1
        for argument in list(held)[: max(0, len(held) - HELD_LIMIT)]:
            del held[argument]
        assert await client.gather(list(held.values())) == list(held)

    async def restarted_scaler(watch: BoundsWatch) -> ScalerProcess:
        started = deployment.start_scaler(**fixed(target))
        await deployment.wait_for(
            "the restarted scaler serves its metrics",
            polled(watch, lambda: scaler_metrics_up(deployment.metrics_port)),
        )
        return started

    async with Client(f"tcp://127.0.0.1:{scheduler_host.port}", asynchronous=True) as client:
        await converge(new_watch())
        await top_up(client)
        for number in range(CYCLES * len(CYCLE)):
            kind = CYCLE[number % len(CYCLE)]
            long_retirement = number // len(CYCLE) % LONG_RETIREMENT_EVERY == 3
            if kind == "scaler-sigkill-retiring" and long_retirement:
                kind = "scaler-sigkill-long-retirement"
            watch = new_watch()
            before = scheduler_host.ledger()
            retired_before = len(retirements.retired)
            killed: set[str] = set()
            expected_retirements = 0
            keys_lost = recomputed = 0
            ballast: list[Future] = []
            if kind == "scaler-sigkill-long-retirement":
                ballast = [
                    client.submit(heavy, index, MOVE_SECONDS, workers=[name], pure=False)
                    for index, name in enumerate(sorted(deployment.connected()))
                ]
                await wait(ballast)  # never gathered: the client would wait too
            if kind.startswith("scaler-sigkill"):
                await asyncio.sleep(chooser.uniform(0, INTERVAL))  # a random loop point
                scaler.kill()
                if kind == "scaler-sigkill":
                    assert target == MINIMUM
                    target = MAXIMUM
                else:
                    assert target == MAXIMUM
                    target = MINIMUM
                    expected_retirements = 1
                    scaler = deployment.start_scaler(**fixed(target))
                    retirements.kill = scaler.kill
                    retirements.kill_within = MOVE_SECONDS / 4 if ballast else None
                    await deployment.wait_for(
                        "the scaler asks the scheduler to retire a worker and is killed",
                        polled(watch, lambda: retirements.kill is None),
                    )
                scaler = await restarted_scaler(watch)
                found_still_retiring += bool(ballast) and retirements.in_flight > 0
            elif kind == "worker-sigkill":
                await asyncio.sleep(chooser.uniform(0, INTERVAL))  # a random point of the loop
                victim, pid = chooser.choice(sorted(deployment.processes().items()))
                os.killpg(pid, signal.SIGKILL)
                killed.add(victim)
                await deployment.wait_for(
                    f"the SIGKILLed {victim} is gone",
                    polled(watch, lambda: victim not in deployment.processes()),  # noqa: B023
                )
            else:
                old_workers = set(deployment.processes())
                await scheduler_host.crash()
                keys_lost = len(held)
                await asyncio.sleep(chooser.uniform(0, INTERVAL))  # the restart's downtime
                new_scheduler = await scheduler_host.start()
                retirements.install(new_scheduler)
                await deployment.wait_for(
                    "every old worker registered with the new scheduler or exited",
                    polled(
                        watch,
                        lambda: all(
                            name in deployment.connected() or name not in deployment.processes()
                            for name in old_workers  # noqa: B023
                        ),
                    ),
                )
                before = scheduler_host.ledger()
            # The fault is over: count the scaler's ticks until the count is in bounds again.
            ticks = await asyncio.to_thread(
                watch.ticks_to_bounds, RECOVERY_TIMEOUT, deployment.logs
            )
            recovery = await converge(watch)
            if kind == "scheduler-restart":
                await deployment.wait_for(
                    "the client is connected to the new scheduler",
                    lambda: client.id in scheduler_host.scheduler.clients,
                )
                arguments = list(held)
                held = dict(zip(arguments, client.map(slow, arguments, delay=0.0), strict=True))
            values = await client.gather(list(held.values()))
            assert values == list(held), "a held result is wrong"
            after = scheduler_host.ledger()
            lost = lost_since(before["lost_from"], after["lost_from"])
            held_keys = {str(future.key) for future in held.values()}
            from_removed = sum(len(keys) for name, keys in lost.items() if name not in killed)
            keys_lost += sum(1 for keys in lost.values() for key in keys if key in held_keys)
            recomputed += sum(
                after["computed"].get(key, 0) - before["computed"].get(key, 0)
                for key in held_keys
                if kind == "scheduler-restart" or key in before["computed"]
            )
            retired = retirements.retired[retired_before:]
            TALLY.faults.append(
                FaultRecord(
                    backend="local",
                    kind=kind,
                    recovery_seconds=recovery,
                    seconds_outside_bounds=watch.seconds_outside,
                    keys_lost_from_retired_workers=from_removed,
                    tasks_recomputed=recomputed,
                    ticks_to_bounds=ticks,
                    keys_lost=keys_lost,
                )
            )
            assert from_removed == 0, (
                f"{kind}: results lost with workers the test did not kill: {lost} "
                f"(killed: {sorted(killed)}, retired: {retired})\n{deployment.logs()}"
            )
            assert len(retired) == expected_retirements, (
                f"{kind}: the scheduler retired {retired}, expected {expected_retirements} "
                f"worker(s)\n{deployment.logs()}"
            )
            del ballast
            await top_up(client)
        await ledger_catches_a_removal_without_retirement(scheduler_host.scheduler, held)
        await converge(new_watch())
        held.clear()
    assert retirements.keys_moved > 0, "no retired worker held a result: the test proves nothing"
    assert retirements.kills_during > 0, "the scaler was never killed during a retirement"
    assert found_still_retiring > 0, "no restarted scaler found a worker still retiring"
    await scaler.stop()
    # Teardown by the product's own means: a scaler told to run zero workers.
    deployment.start_scaler(**fixed(0, minimum=0))
    await deployment.wait_for("every worker is retired", lambda: not deployment.processes())
    TALLY.instances_left_behind += len(deployment.processes()) + len(deployment.connected())
    assert not deployment.connected()
