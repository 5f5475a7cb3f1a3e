"""The scaler against a real Docker engine, in-process: a container the engine refuses carries
the engine's error as its reason (said once, scale-ups held), and a worker container that exits
by itself is removed on the next tick, with no scale action to carry it."""

from __future__ import annotations

import logging
import subprocess
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from distributed import Scheduler

from dask_deploy.backends.docker import create
from dask_deploy.config import LoopSettings
from dask_deploy.contract import BackendContext, InstanceState
from dask_deploy.observe import RpcScheduler
from dask_deploy.policy import PolicySettings, load_policy_factory
from dask_deploy.scaler import Scaler
from dask_deploy.scheduler_preload import dask_setup
from dask_deploy.steps import Bounds
from docker_support import LABEL_TEST

pytestmark = [pytest.mark.docker, pytest.mark.integration]


@pytest.fixture
async def scheduler() -> AsyncIterator[Scheduler]:
    async with Scheduler(host="127.0.0.1", port=0, dashboard_address=":0") as s:
        dask_setup(s)  # what `--preload dask_deploy.scheduler_preload` does
        yield s


def fixed_scaler(scheduler: Scheduler, image: str, workers: int, **options: object) -> Scaler:
    deployment = f"dk{uuid.uuid4().hex[:6]}"
    backend = create(
        BackendContext(
            deployment,
            scheduler.address,
            {"image": image, "stop_timeout": 5, "environment": {"TEST": "1"}, **options},
        )
    )
    policy = load_policy_factory("fixed")(
        PolicySettings(minimum=workers, maximum=workers, options={"workers": workers})
    )
    return Scaler(
        scheduler=RpcScheduler(scheduler.address, connection_args={}),
        backend=backend,
        policy=policy,
        policy_name="fixed",
        bounds=Bounds(workers, workers),
        settings=LoopSettings(interval=0.5, startup_timeout=2),
    )


def remove_deployment(deployment: str) -> None:
    listed = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=dask-deploy.deployment={deployment}"],
        capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    if listed:
        subprocess.run(["docker", "rm", "-f", "-v", *listed], capture_output=True)


async def test_the_engines_refusal_is_the_reason_said_once_and_held(
    docker_engine: None, scheduler: Scheduler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dask_deploy.scaler")
    scaler = fixed_scaler(scheduler, "localhost/dask-deploy-test/absent:0", 2)
    try:
        for _ in range(8):  # four startup timeouts
            await scaler.tick()
            time.sleep(0.5)
        (stuck,) = await scaler.backend.instances()
        assert stuck.state is InstanceState.PENDING
        assert stuck.reason is not None and "No such image" in stuck.reason, stuck.reason
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cannot")]
        assert len(lines) == 1, lines
        assert f"cannot start {stuck.name}: the Docker engine refused the container" in lines[0]
        assert "not connected for" not in caplog.text
        assert scaler.metrics.registry.get_sample_value("dask_deploy_stuck_workers") == 1
    finally:
        await scaler.backend.close()
        await scaler.scheduler.close()


async def test_an_exited_worker_container_is_removed_on_the_next_tick(
    docker_images: dict[str, str], scheduler: Scheduler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dask_deploy.scaler")
    # The worker gives up on a scheduler it cannot reach after one second and its container
    # exits: an instance that ended by itself, while the policy (0 workers) asks for nothing.
    scaler = fixed_scaler(scheduler, docker_images["worker"], 0)
    deployment = scaler.backend.settings.deployment  # type: ignore[attr-defined]
    name = f"{deployment}-worker-0"
    subprocess.run(
        ["docker", "run", "-d", "--name", name, "--network", "host",
         "--label", f"dask-deploy.deployment={deployment}", "--label", "dask-deploy.role=worker",
         "--label", f"{LABEL_TEST}=1", docker_images["worker"], "tcp://127.0.0.1:9",
         "--death-timeout", "1", "--no-nanny"],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            instances = {i.name: i.state for i in await scaler.backend.instances()}
            if instances.get(name) is InstanceState.EXITED:
                break
            assert time.monotonic() < deadline, f"the container did not exit: {instances}"
            time.sleep(0.5)
        await scaler.tick()
        assert await scaler.backend.instances() == []
        assert f"removed ended {name}" in caplog.text
    finally:
        remove_deployment(deployment)
        await scaler.backend.close()
        await scaler.scheduler.close()
