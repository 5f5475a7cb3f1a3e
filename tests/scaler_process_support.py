"""The scaler as ``dask-deploy scale`` beside an in-process scheduler, for backend end-to-end tests.

The scheduler runs in the test's event loop (so a plugin can count lost results); the scaler
is a subprocess exactly as in production, its log kept for the assertions and for failures.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from distributed import Scheduler
from distributed.diagnostics.plugin import SchedulerPlugin

from process_support import free_port


class LostResults(SchedulerPlugin):
    """Counts results that left memory other than by being released (a worker took them)."""

    def __init__(self) -> None:
        self.lost: Counter[str] = Counter()

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if start == "memory" and finish not in ("memory", "released", "forgotten"):
            self.lost[str(key)] += 1


def scaler_config(
    scheduler: Scheduler, backend: str, backend_options: dict[str, Any], **policy: Any
) -> dict[str, Any]:
    """A scaler configuration: adaptive, 0 to 4 workers, ticks of 0.5 s, a 2 s window;
    ``policy`` overrides keys of the policy section (``deployment`` too)."""
    return {
        "deployment": policy.pop("deployment", "e2e"),
        "scheduler": {"address": scheduler.address},
        "policy": {
            "name": "adaptive",
            "minimum": 0,
            "maximum": 4,
            "options": {"scale_down_window": 2, "scale_down_window_min": 2},
            **policy,
        },
        "loop": {"interval": 0.5, "startup_timeout": 120, "cleanup_on_exit": False},
        "backend": {"name": backend, "options": backend_options},
        "metrics": {"host": "127.0.0.1", "port": free_port()},
    }


class ScalerProcess:
    """``dask-deploy scale --config <file>`` in a subprocess, logging to a file."""

    def __init__(self, config: dict[str, Any], folder: Path, cwd: Path | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.config_file = folder / "scaler-config.yaml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.log = folder / "scaler.log"
        self.cwd = cwd
        self.metrics_port = int(config["metrics"]["port"])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ScalerProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dask_deploy.cli",
                    "scale",
                    "--config",
                    str(self.config_file),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
            )
        return self

    def metric(self, name: str) -> float | None:
        """One unlabelled value of the scaler's Prometheus endpoint; None when not served."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                text = reply.read().decode()
        except OSError:
            return None
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else None

    def ticks(self) -> int:
        """Ticks the scaler finished (dask_deploy_ticks_total); 0 before it serves them."""
        return int(self.metric("dask_deploy_ticks_total") or 0)

    async def wait_ticks(self, count: int) -> None:
        """Wait until ``count`` more ticks have finished."""
        start = self.ticks()
        await until(f"{count} more ticks", lambda: self.ticks() >= start + count, self.tail)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return "--- scaler log\n" + "\n".join(self.text().splitlines()[-lines:])

    async def stop(self) -> None:
        """SIGTERM and wait, while the in-process scheduler keeps answering the scaler."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"the scaler ignored SIGTERM for 30 s\n{self.tail()}")
            await asyncio.sleep(0.1)


async def until(
    what: str, condition: Callable[[], Any], logs: Callable[[], str], timeout: float = 120
) -> Any:
    """Wait (without blocking the loop) until ``condition()`` is truthy, and return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting until {what}\n{logs()}")


def worker_names(scheduler: Scheduler) -> set[str]:
    return {str(w.name) for w in scheduler.workers.values()}


def retired_names(log: str) -> set[str]:
    """Every name in the scaler's "retired a, b; removing them from the backend" lines."""
    names: set[str] = set()
    for line in log.splitlines():
        if "retired " in line and "; removing them from the backend" in line:
            listed = line.split("retired ", 1)[1].split(";", 1)[0]
            names.update(name.strip() for name in listed.split(","))
    return names
