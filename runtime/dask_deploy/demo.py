"""``make demo``: a scheduler, the scaler with the local backend, a bursty workload, a plot.

Runs in about a minute and a half on two cores: starts ``dask scheduler`` (with the
read-only preload) on 127.0.0.1, runs the scaler (adaptive policy, minimum 0,
maximum 4, local backend) in this process, submits two bursts with a progress bar
while printing every scaling decision with its reason, then writes
``demo-output/workers.png`` (workers and queued tasks over time) and shuts
everything down.

    python -m dask_deploy.demo [--output DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .config import parse_config
from .observe import RpcScheduler
from .scaler import build_scaler

console = Console()


def work(i: int, seconds: float) -> int:
    """One demo task: wait a while, return a small result (runs on the workers)."""
    time.sleep(seconds)
    return i


@dataclass
class Timeline:
    """Samples for the plot: time, connected workers, queued (not yet running) tasks."""

    times: list[float] = field(default_factory=list)
    workers: list[int] = field(default_factory=list)
    queued: list[int] = field(default_factory=list)
    decisions: list[tuple[float, str]] = field(default_factory=list)


class DecisionPrinter(logging.Handler):
    """Prints the scaler's decisions (not the repeated 'at target' holds) as they happen."""

    def __init__(self, start: float, timeline: Timeline) -> None:
        super().__init__(logging.INFO)
        self.start = start
        self.timeline = timeline

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("hold: at target"):
            return
        elapsed = time.monotonic() - self.start
        kind = next((k for k in ("scale up", "scale down") if message.startswith(k)), None)
        style = {"scale up": "bold green", "scale down": "bold red"}.get(kind or "", "dim")
        if kind is not None:
            self.timeline.decisions.append((elapsed, kind))
        console.print(f"[cyan]{elapsed:5.1f}s[/] [{style}]{escape(message)}[/]", highlight=False)


def start_scheduler(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A ``dask scheduler`` on 127.0.0.1 with the scaler's preload; returns it and its address."""
    scheduler_file = folder / "scheduler.json"
    log = (folder / "scheduler.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(scheduler_file),
            "--preload",
            "dask_deploy.scheduler_preload",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not scheduler_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            tail = (folder / "scheduler.log").read_text()[-2000:]
            raise RuntimeError(f"the scheduler did not start:\n{tail}")
        time.sleep(0.1)
    return process, str(json.loads(scheduler_file.read_text())["address"])


async def sample(address: str, start: float, timeline: Timeline, stop: asyncio.Event) -> None:
    """Record connected workers and queued tasks twice a second."""
    link = RpcScheduler(address, connection_args={})
    try:
        while not stop.is_set():
            try:
                state = await link.observe(None)
            except OSError:
                state = None
            if state is not None:
                timeline.times.append(time.monotonic() - start)
                timeline.workers.append(len(state.workers))
                timeline.queued.append((state.tasks_queued or 0) + (state.tasks_unrunnable or 0))
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass
    finally:
        await link.close()


async def run_burst(
    client: Any, progress: Progress, label: str, count: int, seconds: float
) -> list[object]:
    """Submit ``count`` tasks and advance a progress bar as they finish; returns the futures."""
    from distributed import as_completed

    futures = client.map(
        work, range(count), seconds=seconds, key=[f"{label}-{i}" for i in range(count)]
    )
    bar = progress.add_task(label, total=count)
    async for _ in as_completed(futures):  # type: ignore[no-untyped-call]
        progress.advance(bar)
    return list(futures)


async def wait_for_workers(address: str, check: Callable[[int], bool], timeout: float) -> None:
    """Poll the scheduler until ``check(number of workers)`` holds or ``timeout`` passes."""
    link = RpcScheduler(address, connection_args={})
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            state = await link.observe(None)
            if check(len(state.workers)):
                return
            await asyncio.sleep(0.5)
    finally:
        await link.close()


async def demo(address: str, state_dir: Path, timeline: Timeline) -> None:
    """The scaler in this process, two bursts and an idle tail; decisions printed live."""
    from distributed import Client

    config = parse_config(
        {
            "deployment": "demo",
            "scheduler": {"address": address},
            "policy": {
                "name": "adaptive",
                "minimum": 0,
                "maximum": 4,
                "options": {"scale_down_window": 6, "target_duration": 2},
            },
            "loop": {"interval": 0.5, "startup_timeout": 60, "cleanup_on_exit": True},
            "backend": {
                "name": "local",
                "options": {"state_dir": str(state_dir), "memory_limit": "512MiB"},
            },
        }
    )
    start = time.monotonic()
    printer = DecisionPrinter(start, timeline)
    scaler_logger = logging.getLogger("dask_deploy.scaler")
    scaler_logger.addHandler(printer)
    scaler_logger.setLevel(logging.INFO)
    scaler_logger.propagate = False
    scaler = build_scaler(config)
    stop = asyncio.Event()
    loop_task = asyncio.create_task(scaler.run(stop))
    sampler_stop = asyncio.Event()
    sampler = asyncio.create_task(sample(address, start, timeline, sampler_stop))
    try:
        async with Client(address, asynchronous=True) as client:  # type: ignore[no-untyped-call]
            columns = (
                TextColumn("{task.description:>8}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console) as progress:
                console.rule("burst 1: 40 tasks of 1 s")
                held = await run_burst(client, progress, "burst-1", 40, 1.0)
                console.rule("idle 12 s (results of burst 1 stay held by the client)")
                await asyncio.sleep(12)
                console.rule("burst 2: 24 tasks of 1.5 s")
                second = await run_burst(client, progress, "burst-2", 24, 1.5)
            del held, second
            console.rule("idle: results released, waiting for the scaler to reach the minimum (0)")
            await wait_for_workers(address, lambda n: n == 0, timeout=40)
            await asyncio.sleep(1)
    finally:
        sampler_stop.set()
        await sampler
        stop.set()
        await loop_task
        await scaler.backend.close()
        await scaler.scheduler.close()
        scaler_logger.removeHandler(printer)


def plot(timeline: Timeline, path: Path) -> None:
    """Workers and queued tasks over time, with the scaling decisions marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 5.5))
    top.step(timeline.times, timeline.workers, where="post", color="tab:blue")
    top.set_ylabel("workers")
    top.set_ylim(bottom=0, top=max([*timeline.workers, 4]) + 0.5)
    for at, kind in timeline.decisions:
        colour = "tab:green" if kind == "scale up" else "tab:red"
        top.axvline(at, color=colour, alpha=0.4, linestyle="--")
    top.set_title("dask-deploy demo: adaptive policy, local backend (min 0, max 4)")
    bottom.plot(timeline.times, timeline.queued, color="tab:orange")
    bottom.set_ylabel("queued tasks")
    bottom.set_xlabel("seconds (dashed: green scale-up, red scale-down)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m dask_deploy.demo", description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("demo-output"))
    args = parser.parse_args(argv)
    timeline = Timeline()
    with tempfile.TemporaryDirectory(prefix="dask-deploy-demo-") as folder:
        console.print("[bold]starting a scheduler on 127.0.0.1 and the scaler (local backend)[/]")
        scheduler, address = start_scheduler(Path(folder))
        try:
            console.print(f"scheduler at {address}; the scaler decides every 0.5 s")
            asyncio.run(demo(address, Path(folder) / "workers", timeline))
        finally:
            os.killpg(scheduler.pid, signal.SIGTERM)
            try:
                scheduler.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(scheduler.pid, signal.SIGKILL)
                scheduler.wait()
    path = args.output / "workers.png"
    plot(timeline, path)
    ups = sum(1 for _, kind in timeline.decisions if kind == "scale up")
    downs = len(timeline.decisions) - ups
    console.print(
        f"[bold]done:[/] {ups} scale-ups, {downs} scale-downs, peak "
        f"{max(timeline.workers, default=0)} workers; everything is shut down."
    )
    console.print(f"plot of workers and queued tasks over time: [bold]{path.absolute()}[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
