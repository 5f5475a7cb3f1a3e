"""Faults against the local backend: SIGKILL the scaler at random points, SIGKILL workers.

One real scheduler (in the test process, counting task transitions), ``dask-deploy scale``
as a subprocess with the local backend and a fixed target of 2 workers within
[minimum 1, maximum 3], and a client holding results all along. Each fault is recorded in
the tally (tests/faults/tally.py) printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import pytest
from distributed import Client, Scheduler
from scaler_support import Deployment, counter, slow
from tally import TALLY, FaultRecord

pytestmark = [pytest.mark.faults, pytest.mark.integration]

MINIMUM, TARGET, MAXIMUM = 1, 2, 3
INTERVAL = 0.3
FAULTS = 100
RECOVERY_TIMEOUT = 60.0


def policy() -> dict[str, object]:
    return {
        "name": "fixed",
        "minimum": MINIMUM,
        "maximum": MAXIMUM,
        "options": {"workers": TARGET},
    }


async def recover(deployment: Deployment) -> tuple[float, float]:
    """Wait until exactly TARGET workers run and are connected: (seconds, seconds outside)."""
    started = time.monotonic()
    outside = 0.0
    last = started
    seen_processes: set[str] = set()

    def converged() -> bool:
        nonlocal outside, last
        now = time.monotonic()
        connected = deployment.connected()
        if not MINIMUM <= len(connected) <= MAXIMUM:
            outside += now - last
        last = now
        running = deployment.processes()
        seen_processes.update(running)
        assert len(running) <= MAXIMUM, f"more instances than the maximum: {sorted(running)}"
        return len(running) == TARGET and connected == set(running)

    await deployment.wait_for("the deployment is back to its target", converged, RECOVERY_TIMEOUT)
    return time.monotonic() - started, outside


async def test_random_scaler_and_worker_kills_converge_and_lose_nothing(
    deployment: Deployment, scheduler: Scheduler
) -> None:
    chooser = random.Random(20261128)
    scaler = deployment.start_scaler(**policy())
    async with Client(scheduler.address, asynchronous=True) as client:
        await recover(deployment)
        held = client.map(slow, range(8), delay=0.0)
        assert await client.gather(held) == list(range(8))
        transitions = counter(scheduler)
        for number in range(FAULTS):
            lost_before = sum(transitions.lost[f.key] for f in held)
            computed_before = sum(transitions.computed[f.key] for f in held)
            kind = "scaler-sigkill" if number % 2 == 0 else "worker-sigkill"
            if kind == "scaler-sigkill":
                # A random point of the loop: anywhere within two intervals of its last tick.
                await asyncio.sleep(chooser.uniform(0, 2 * INTERVAL))
                scaler.kill()
                scaler = deployment.start_scaler(**policy())
            else:
                victim, pid = chooser.choice(sorted(deployment.processes().items()))
                os.killpg(pid, signal.SIGKILL)
                # Recovery counts only once the kill is visible to the scheduler.
                await deployment.wait_for(
                    f"{victim} leaves the scheduler",
                    lambda: victim not in deployment.connected(),  # noqa: B023
                )
            recovery, outside = await recover(deployment)
            assert await client.gather(held) == list(range(8)), "a held result is wrong"
            lost = sum(transitions.lost[f.key] for f in held) - lost_before
            recomputed = sum(transitions.computed[f.key] for f in held) - computed_before
            TALLY.faults.append(
                FaultRecord(
                    backend="local",
                    kind=kind,
                    recovery_seconds=recovery,
                    seconds_outside_bounds=outside,
                    # Only a SIGKILLed worker may take results with it; the scaler never may.
                    keys_lost_from_retired_workers=lost if kind == "scaler-sigkill" else 0,
                    tasks_recomputed=recomputed,
                )
            )
            if kind == "scaler-sigkill":
                assert lost == 0, f"a scaler restart lost {lost} held results\n{deployment.logs()}"
        del held
    await scaler.stop()
    # Teardown by the product's own means: a scaler told to run zero workers.
    deployment.start_scaler(name="fixed", minimum=0, maximum=MAXIMUM, options={"workers": 0})
    await deployment.wait_for("every worker is retired", lambda: not deployment.processes())
    TALLY.instances_left_behind += len(deployment.processes()) + len(deployment.connected())
    assert not deployment.connected()
