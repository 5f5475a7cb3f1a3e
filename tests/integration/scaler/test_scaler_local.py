"""The scaler against a real scheduler with real local workers."""

from __future__ import annotations

import asyncio

import pytest
from distributed import Client, Scheduler
from scaler_support import Deployment, counter, slow

pytestmark = pytest.mark.integration


async def test_burst_scales_up_idle_scales_down_and_held_results_survive(
    deployment: Deployment, scheduler: Scheduler
) -> None:
    scaler = deployment.start_scaler(minimum=0, maximum=3)
    async with Client(scheduler.address, asynchronous=True) as client:
        futures = client.map(slow, range(40))
        await deployment.wait_for(
            "the burst brings several workers", lambda: len(deployment.connected()) >= 2
        )
        assert await client.gather(futures) == list(range(40))
        held = {f.key for f in futures}

        # Idle: scale down, but one worker stays because it holds the client's results.
        await deployment.wait_for(
            "idle workers are retired", lambda: len(deployment.connected()) == 1
        )
        await deployment.wait_for(
            "their processes are gone", lambda: len(deployment.processes()) == 1
        )
        await asyncio.sleep(1.5)  # several ticks more: still one worker, nothing lost
        assert all(f.status == "finished" for f in futures)
        assert await client.gather(futures) == list(range(40))
        transitions = counter(scheduler)
        assert all(transitions.computed[str(k)] == 1 for k in held), "a held result was recomputed"
        assert not any(transitions.lost[str(k)] for k in held), "a held result was lost"

        # Released: down to the minimum (0).
        del futures
        await deployment.wait_for(
            "idle scales down to the minimum", lambda: not deployment.connected()
        )
        await deployment.wait_for("no worker process is left", lambda: not deployment.processes())
    log = scaler.text()
    assert "scale up to" in log and "scheduler wants more workers" in log
    assert "scale down" in log and "retired itest-" in log


async def test_sigkill_during_scale_up_then_restart_converges_without_duplicates(
    deployment: Deployment, scheduler: Scheduler
) -> None:
    first = deployment.start_scaler(minimum=0, maximum=3)
    async with Client(scheduler.address, asynchronous=True) as client:
        futures = client.map(slow, range(60), delay=0.5)
        # Kill as soon as the first worker process exists, before the workers connect.
        await deployment.wait_for(
            "a scale-up launches workers", lambda: bool(deployment.processes())
        )
        first.kill()
        launched = set(deployment.processes())
        assert launched, "the scale-up launched no worker before the kill"

        second = deployment.start_scaler(minimum=0, maximum=3)
        seen: set[str] = set()

        def converged() -> bool:
            running = deployment.processes()
            seen.update(running)
            assert len(running) <= 3, f"duplicates: {sorted(running)}"
            return len(running) == 3 and deployment.connected() == set(running)

        await deployment.wait_for("the restarted scaler converges", converged)
        assert launched <= seen, "the restarted scaler dropped workers it should have re-adopted"
        assert await client.gather(futures) == list(range(60))
        del futures
        await deployment.wait_for("all workers retired", lambda: not deployment.processes())
        assert not deployment.connected(), "an orphan worker is still connected"
    assert "scale down" in second.text()


async def test_a_worker_whose_data_cannot_move_is_not_killed(
    deployment: Deployment, scheduler: Scheduler
) -> None:
    keeper = deployment.start_scaler(name="fixed", minimum=0, maximum=1, options={"workers": 1})
    async with Client(scheduler.address, asynchronous=True) as client:
        await deployment.wait_for("one worker", lambda: len(deployment.connected()) == 1)
        future = client.submit(slow, 7, delay=0.0)
        assert await future == 7
        (name,) = deployment.connected()
        await keeper.stop()

        # A scaler that wants zero workers: the scheduler refuses to retire the only
        # holder of the result, so the worker must keep running.
        deployment.start_scaler(name="fixed", minimum=0, maximum=1, options={"workers": 0})
        last = deployment.scalers[-1]
        await deployment.wait_for("the refusal is logged", lambda: "did not retire" in last.text())
        await asyncio.sleep(1.0)
        assert deployment.connected() == {name}
        assert name in deployment.processes()
        assert await future == 7
        assert counter(scheduler).computed[str(future.key)] == 1
        assert "scale down " + name in last.text()
