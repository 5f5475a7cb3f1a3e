"""Fixtures: a real scheduler in the test process and a deployment of the local backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from distributed import Scheduler
from scaler_support import Deployment, TransitionCounter

from dask_deploy.scheduler_preload import dask_setup


@pytest.fixture
async def scheduler() -> AsyncIterator[Scheduler]:
    async with Scheduler(host="127.0.0.1", port=0, dashboard_address="127.0.0.1:0") as s:
        dask_setup(s)  # what `--preload dask_deploy.scheduler_preload` does
        s.add_plugin(TransitionCounter(), name="transition-counter")
        yield s


@pytest.fixture
async def deployment(scheduler: Scheduler, tmp_path: Path) -> AsyncIterator[Deployment]:
    deployed = Deployment(scheduler, tmp_path)
    try:
        yield deployed
    finally:
        await deployed.teardown()
