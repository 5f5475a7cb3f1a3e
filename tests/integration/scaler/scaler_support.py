"""Helpers: a scheduler in the test process, the scaler as a subprocess, real local workers.

The scheduler runs in the test's event loop so a scheduler plugin can count every task
transition; the scaler runs as ``dask-deploy scale`` exactly as in production, with the
local backend starting ``dask worker`` processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from distributed import Scheduler
from distributed.diagnostics.plugin import SchedulerPlugin

from dask_deploy.backends.local import running_workers

HERE = str(Path(__file__).parent)


def slow(x: int, delay: float = 0.4) -> int:
    """A task that takes a while; importable by the workers through PYTHONPATH."""
    time.sleep(delay)
    return x


class TransitionCounter(SchedulerPlugin):
    """Counts, per key, how often a task finished computing and how often it was lost."""

    def __init__(self) -> None:
        self.computed: Counter[str] = Counter()
        self.lost: Counter[str] = Counter()

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if start == "processing" and finish == "memory":
            self.computed[str(key)] += 1
        if start == "memory" and finish != "memory":
            self.lost[str(key)] += 1


def counter(scheduler: Scheduler) -> TransitionCounter:
    plugin = scheduler.plugins["transition-counter"]
    assert isinstance(plugin, TransitionCounter)
    return plugin


class ScalerProcess:
    """``dask-deploy scale`` as a subprocess; its log is kept for assertions and failures."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.stopped = False

    def start(self) -> None:
        # Workers inherit the scaler's environment: let them import this module's tasks.
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]),
        }
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dask_deploy.cli", "scale", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def kill(self) -> None:
        assert self.process is not None
        self.stopped = True
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    async def stop(self) -> int | None:
        """SIGTERM, then wait while the in-process scheduler keeps serving the scaler."""
        self.stopped = True
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.process.kill()
                self.process.wait()
                pytest.fail(f"the scaler ignored SIGTERM for 30s\n{self.tail()}")
            await asyncio.sleep(0.05)
        return self.process.returncode


class Deployment:
    """One scaler configuration and the workers its local backend launches."""

    def __init__(self, scheduler: Scheduler, tmp: Path) -> None:
        self.scheduler = scheduler
        self.state_dir = tmp / "state"
        self.tmp = tmp
        self.scalers: list[ScalerProcess] = []

    def write_config(self, **policy: Any) -> Path:
        options = policy.pop("options", {"scale_down_window": 2, "growth_floor": 4})
        config = {
            "deployment": "itest",
            "scheduler": {"address": self.scheduler.address},
            "policy": {
                "name": "adaptive",
                "minimum": 0,
                "maximum": 3,
                "options": options,
                **policy,
            },
            "loop": {"interval": 0.3, "startup_timeout": 60, "cleanup_on_exit": False},
            "backend": {
                "name": "local",
                "options": {
                    "state_dir": str(self.state_dir),
                    "memory_limit": "512MiB",
                    # The nanny is not under test here: without it a worker boots in half the
                    # time and CPU (one Python process, not two).
                    "worker_args": ["--no-nanny"],
                },
            },
        }
        path = self.tmp / f"scaler-{len(self.scalers)}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start_scaler(self, **policy: Any) -> ScalerProcess:
        scaler = ScalerProcess(
            self.write_config(**policy), self.tmp / f"scaler-{len(self.scalers)}.log"
        )
        self.scalers.append(scaler)
        scaler.start()
        return scaler

    def processes(self) -> dict[str, int]:
        """Worker name -> pid of every live worker process of this deployment."""
        return running_workers(self.state_dir)

    def connected(self) -> set[str]:
        return {str(ws.name) for ws in self.scheduler.workers.values()}

    def logs(self) -> str:
        return "\n\n".join(f"--- {s.log.name} ---\n{s.tail()}" for s in self.scalers)

    async def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 60) -> None:
        """Wait (yielding to the in-process scheduler) until ``check()``; fail with the logs."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                pytest.fail(
                    f"timed out waiting until {what}; connected={sorted(self.connected())} "
                    f"processes={sorted(self.processes())}\n{self.logs()}"
                )
            for scaler in self.scalers:
                if (
                    scaler.process is not None
                    and not scaler.stopped
                    and scaler.process.poll() is not None
                ):
                    pytest.fail(
                        f"the scaler exited with {scaler.process.returncode}\n{self.logs()}"
                    )
            await asyncio.sleep(0.1)

    async def teardown(self) -> None:
        for scaler in self.scalers:
            await scaler.stop()
        if self.state_dir.exists():
            for pid in self.processes().values():
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
