"""Fault suite fixtures and the tally printed at the end of the run."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from distributed import Scheduler

# Reuse the scaler integration harness (scheduler in-process, `dask-deploy scale` subprocess).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration" / "scaler"))

from scaler_support import Deployment, TransitionCounter
from tally import TALLY

from dask_deploy.scheduler_preload import dask_setup


@pytest.fixture
async def scheduler() -> AsyncIterator[Scheduler]:
    async with Scheduler(host="127.0.0.1", port=0, dashboard_address="127.0.0.1:0") as s:
        dask_setup(s)
        s.add_plugin(TransitionCounter(), name="transition-counter")
        yield s


@pytest.fixture
async def deployment(scheduler: Scheduler, tmp_path: Path) -> AsyncIterator[Deployment]:
    deployed = Deployment(scheduler, tmp_path)
    try:
        yield deployed
    finally:
        await deployed.teardown()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the fault tally: faults injected, keys lost, instances left, worst recovery."""
    if not TALLY.faults:
        return
    terminalreporter.section("fault tally")
    for line in TALLY.lines():
        terminalreporter.write_line(line)
