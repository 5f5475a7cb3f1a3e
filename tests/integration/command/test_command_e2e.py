"""The command backend end to end with both rendered examples and real Dask workers.

``make render BACKEND=command`` output is used as a user would: the scaler runs in the
rendered folder with its scaler-config.yaml (tick and window shortened for the test), and
the start, stop and list commands are the example scripts.
"""

from __future__ import annotations

import operator
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from distributed import Client, Scheduler

from dask_deploy.scheduler_preload import dask_setup
from render_support import render_over_defaults
from scaler_process_support import (
    LostResults,
    ScalerProcess,
    retired_names,
    scaler_config,
    until,
    worker_names,
)

pytestmark = [pytest.mark.command, pytest.mark.integration]


@pytest.fixture
async def scheduler() -> AsyncIterator[Scheduler]:
    async with Scheduler(host="127.0.0.1", port=0, dashboard_address="127.0.0.1:0") as s:
        dask_setup(s)
        s.add_plugin(LostResults(), name="lost-results")
        yield s


def rendered(scheduler: Scheduler, out: Path, values: dict[str, Any]) -> dict[str, Any]:
    """Render the command templates for this scheduler; the scaler configuration, shortened."""
    port = int(scheduler.address.rsplit(":", 1)[1])
    render_over_defaults(
        "command",
        {
            "scheduler": {"host": "127.0.0.1", "port": port},
            "worker": {"threads": 1, "memory": "512MiB", "death_timeout": 30},
            **values,
        },
        out,
    )
    config: dict[str, Any] = yaml.safe_load((out / "scaler-config.yaml").read_text())
    shortened = scaler_config(scheduler, "command", config["backend"]["options"], maximum=3)
    shortened["deployment"] = config["deployment"]
    return shortened


def example(out: Path, *args: str, env: dict[str, str]) -> str:
    """Run a rendered example script as the scaler would."""
    import os

    done = subprocess.run(
        [str(out / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        check=True,
    )
    return done.stdout


def listed(out: Path, script: str, env: dict[str, str]) -> dict[str, str]:
    lines = example(out, script, "list", env=env).splitlines()
    return dict(line.split() for line in lines if line.strip())


async def burst_then_idle(
    scheduler: Scheduler, scaler: ScalerProcess, running: Any
) -> tuple[set[str], set[str]]:
    """A burst brings 3 workers; idle retires all but the holder of a kept result.

    Returns (the instances that ran, those still running at the end).
    """
    async with Client(scheduler.address, asynchronous=True) as client:
        futures = client.map(time.sleep, [0.5] * 40, pure=False)
        await until("3 workers run", lambda: len(worker_names(scheduler)) == 3, scaler.tail)
        started = set(running())
        held = client.map(operator.neg, range(5))
        assert await client.gather(futures) == [None] * 40
        assert await client.gather(held) == [0, -1, -2, -3, -4]
        del futures
        await until("idle workers retire", lambda: len(worker_names(scheduler)) <= 1, scaler.tail)
        await until(
            "their instances are gone",
            lambda: set(running()) == worker_names(scheduler),
            scaler.tail,
        )
        assert await client.gather(held) == [0, -1, -2, -3, -4]
        plugin = scheduler.plugins["lost-results"]
        assert isinstance(plugin, LostResults) and not plugin.lost
    return started, set(running())


async def test_local_example_scales_up_and_removes_exactly_the_retired(
    scheduler: Scheduler, tmp_path: Path
) -> None:
    out = tmp_path / "rendered"
    state = tmp_path / "workers"
    config = rendered(
        scheduler,
        out,
        {"python": {"executable": sys.executable}, "local": {"state_dir": str(state)}},
    )
    env = {"DASK_DEPLOY_DEPLOYMENT": config["deployment"]}
    scaler = ScalerProcess(config, tmp_path / "scaler", cwd=out).start()

    def running() -> list[str]:
        return [n for n, s in listed(out, "local-workers.sh", env).items() if s == "running"]

    try:
        started, left = await burst_then_idle(scheduler, scaler, running)
        assert started - left == retired_names(scaler.text()), scaler.tail()
        assert "started dask-worker-" in scaler.text()
    finally:
        await scaler.stop()
        names = list(listed(out, "local-workers.sh", env))
        if names:
            example(out, "local-workers.sh", "stop", *names, env=env)


async def test_a_failing_start_command_is_one_line_and_the_scaler_keeps_running(
    scheduler: Scheduler, tmp_path: Path
) -> None:
    out = tmp_path / "rendered"
    config = rendered(
        scheduler,
        out,
        {
            "commands": {"start": ["sh", "-c", "echo no quota >&2; exit 3"]},
            # The example's list and stop keep to this test's folder, not the user's default.
            "local": {"state_dir": str(tmp_path / "workers")},
        },
    )
    config["policy"]["minimum"] = 2
    scaler = ScalerProcess(config, tmp_path / "scaler", cwd=out).start()
    try:
        await until("the failure is logged", lambda: "no quota" in scaler.text(), scaler.tail)
        await scaler.wait_ticks(6)
        text = scaler.text()
        assert "starting dask-worker-0 failed: `sh -c" in text and "exited 3: no quota" in text
        assert text.count("exited 3: no quota") == 1, "the same failure logged again"
        assert scaler.process is not None and scaler.process.poll() is None
        assert "Traceback" not in text
    finally:
        await scaler.stop()


@pytest.mark.docker
async def test_docker_example_scales_up_and_removes_exactly_the_retired(
    scheduler: Scheduler, tmp_path: Path, docker_images: dict[str, str]
) -> None:
    out = tmp_path / "rendered"
    config = rendered(
        scheduler,
        out,
        {
            "deployment": "cmd-docker-e2e",
            "commands": {"example": "docker"},
            "docker": {"image": docker_images["worker"], "cpus": 1},
        },
    )
    env = {"DASK_DEPLOY_DEPLOYMENT": config["deployment"]}
    scaler = ScalerProcess(config, tmp_path / "scaler", cwd=out).start()

    def running() -> list[str]:
        return [n for n, s in listed(out, "docker-workers.sh", env).items() if s == "running"]

    try:
        started, left = await burst_then_idle(scheduler, scaler, running)
        assert started - left == retired_names(scaler.text()), scaler.tail()
        # A retired worker's container exits by itself, before the scaler's `stop` removes it:
        # between the two it is listed "exited". Removal is the scaler's next step, not instant.
        await until(
            "the removed containers are gone",
            lambda: set(listed(out, "docker-workers.sh", env)) == left,
            scaler.tail,
        )
    finally:
        await scaler.stop()
        names = list(listed(out, "docker-workers.sh", env))
        if names:
            example(out, "docker-workers.sh", "stop", *names, env=env)


def test_scheduler_start_script_runs_the_deployment_and_sigterm_ends_it(tmp_path: Path) -> None:
    """The head script as a user runs it: scheduler, scaler, a worker; SIGTERM stops all."""
    import os
    import signal

    from distributed import Client as SyncClient

    from process_support import free_port, wait_for

    out = tmp_path / "rendered"
    port = free_port()
    render_over_defaults(
        "command",
        {
            "python": {"executable": sys.executable},
            "local": {"state_dir": str(tmp_path / "workers")},
            "scheduler": {"port": port, "dashboard_port": None},
            "worker": {"threads": 1, "memory": "512MiB", "death_timeout": 30},
            "scaler": {"minimum": 1, "interval": 0.5, "metrics_port": None},
        },
        out,
    )
    log = tmp_path / "head.log"
    with log.open("wb") as sink:
        head = subprocess.Popen(
            [str(out / "scheduler-start.sh")],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    env = {"DASK_DEPLOY_DEPLOYMENT": "dask"}
    try:
        with SyncClient(f"tcp://127.0.0.1:{port}", timeout=60) as client:
            wait_for(
                "the scaler brings the minimum worker",
                lambda: (
                    [w["name"] for w in client.scheduler_info()["workers"].values()]
                    == ["dask-worker-0"]
                ),
                logs=lambda: log.read_text(errors="replace"),
            )
            assert client.submit(operator.add, 1, 2).result(timeout=60) == 3
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=60)
        assert "running" not in listed(out, "local-workers.sh", env).values(), (
            "cleanup_on_exit stops the workers\n" + log.read_text(errors="replace")
        )
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        names = list(listed(out, "local-workers.sh", env))
        if names:
            example(out, "local-workers.sh", "stop", *names, env=env)
