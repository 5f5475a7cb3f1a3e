"""``dask-deploy scale --dry-run`` against a real scheduler: decisions printed, SIGTERM honoured."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from distributed import Client, Scheduler
from scaler_support import HERE, slow

pytestmark = pytest.mark.integration


async def test_dry_run_prints_decisions_and_stops_cleanly_on_sigterm(
    scheduler: Scheduler, tmp_path: Path
) -> None:
    log = tmp_path / "scaler.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dask_deploy.cli", "scale", "--scheduler", scheduler.address,
             "--backend", "local", "--dry-run", "--interval", "0.2", "--maximum", "4"],
            stdout=out, stderr=subprocess.STDOUT, cwd=HERE,
            # The local backend's default state folder is under the temporary folder: this
            # test's, not the one other runs and the user's own deployments share.
            env={**os.environ, "TMPDIR": str(tmp_path)},
        )  # fmt: skip
    try:
        async with Client(scheduler.address, asynchronous=True) as client:
            futures = client.map(slow, range(8), delay=5)
            deadline = time.monotonic() + 30
            while "[dry-run] scale up to" not in log.read_text():
                assert time.monotonic() < deadline, log.read_text()
                assert process.poll() is None, log.read_text()
                await asyncio.sleep(0.1)
            assert not scheduler.workers  # nothing was started
            # The real backend was asked, read-only, what it holds.
            assert "[dry-run] the local backend holds 0 instances: none" in log.read_text()
            await client.cancel(futures)
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while process.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.1)
        assert process.returncode == 0, log.read_text()
        assert "scaler stopped" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
