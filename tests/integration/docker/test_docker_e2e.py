"""End to end on a real Docker engine: the rendered compose file, started with docker-compose.

Scheduler container + scaler container (`dask-deploy scale` with the Docker backend, reaching the
engine through the bind-mounted socket) + a Client on the host, all on the host network and
127.0.0.1. A burst scales worker containers up, idleness scales them down through retirement,
results the client holds survive, and teardown leaves no container of the deployment.
"""

from __future__ import annotations

import json
import operator
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client

from docker_support import REPO
from process_support import free_port, wait_for

pytestmark = [
    pytest.mark.docker,
    pytest.mark.integration,
    # The host's Python is a 3.11 patch release other than Debian's 3.11.2 in the images;
    # distributed warns about any difference, and the packages it compares are pinned alike.
    pytest.mark.filterwarnings(
        "ignore:Mismatched versions found:distributed.versions.VersionMismatchWarning"
    ),
]
MAXIMUM = 3


def containers(deployment: str, role: str | None = None) -> dict[str, str]:
    """name -> status of the deployment's containers (all roles unless ``role``)."""
    filters = ["--filter", f"label=dask-deploy.deployment={deployment}"]
    if role:
        filters += ["--filter", f"label=dask-deploy.role={role}"]
    listed = subprocess.run(
        ["docker", "ps", "--all", *filters, "--format", "{{json .}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    return {row["Names"]: row["State"] for row in rows}


def logs(name: str) -> str:
    out = subprocess.run(["docker", "logs", "--tail", "30", name], capture_output=True, text=True)
    return f"----- {name}\n{out.stdout}{out.stderr}"


@pytest.fixture
def deployment(docker_images: dict[str, str], tmp_path: Path) -> Iterator[dict[str, object]]:
    """Render with test values, `docker-compose up -d`; down and remove everything after."""
    compose_bin = shutil.which("docker-compose")
    if compose_bin is None:
        subprocess.run([str(REPO / "scripts" / "ensure-apt.sh"), "docker-compose"], check=True)
        compose_bin = shutil.which("docker-compose")
    assert compose_bin, "docker-compose could not be installed"
    name = f"e2e{time.time_ns() % 10**8}"
    scheduler_port, dashboard_port, metrics_port = free_port(), free_port(), free_port()
    socket_gid = os.stat("/var/run/docker.sock").st_gid
    settings = {
        "deployment": name,
        "scheduler.port": scheduler_port,
        "scheduler.dashboard_port": dashboard_port,
        "worker.threads": 1,
        "worker.memory": "512MiB",
        "worker.stop_timeout": 10,
        "docker.socket_gid": socket_gid,
        "scaler.minimum": 0,
        "scaler.maximum": MAXIMUM,
        "scaler.interval": 0.5,
        "scaler.scale_down_window": 3,
        "scaler.startup_timeout": 120,
        "scaler.metrics_port": metrics_port,
        "scaler.cleanup_on_exit": "true",
    }
    out = tmp_path / "rendered"
    rendered = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "dask-deploy"),
            "render",
            "--backend",
            "docker",
            *(arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert rendered.returncode == 0, rendered.stderr
    compose = [compose_bin, "--project-name", name, "--file", str(out / "compose.yaml")]
    try:
        up = subprocess.run([*compose, "up", "--detach"], capture_output=True, text=True)
        assert up.returncode == 0, up.stderr
        yield {"name": name, "address": f"tcp://127.0.0.1:{scheduler_port}", "compose": compose}
    finally:
        subprocess.run([*compose, "down", "--timeout", "30"], capture_output=True)
        leftovers = list(containers(name))
        if leftovers:
            subprocess.run(["docker", "rm", "--force", *leftovers], capture_output=True)


def test_burst_scales_worker_containers_up_idle_scales_down_and_teardown_is_clean(
    deployment: dict[str, object],
) -> None:
    name = str(deployment["name"])

    def explain() -> str:
        return "\n".join(logs(c) for c in containers(name)) or "no containers"

    wait_for(
        "scheduler and scaler running",
        lambda: (
            containers(name).get(f"{name}-scheduler") == "running"
            and containers(name).get(f"{name}-scaler") == "running"
        ),
        60,
        explain,
    )
    with Client(str(deployment["address"]), timeout="60s") as client:
        held = client.map(operator.mul, range(20), [2] * 20, pure=False)
        burst = client.map(time.sleep, [1.0] * 40, pure=False)
        peak = 0

        def grew() -> bool:
            nonlocal peak
            running = [n for n, s in containers(name, "worker").items() if s == "running"]
            peak = max(peak, len(running))
            return peak >= 2

        wait_for("at least 2 worker containers", grew, 180, explain)
        client.gather(burst)
        del burst
        workers = client.scheduler_info()["workers"].values()
        assert {w["name"] for w in workers} <= set(containers(name, "worker"))
        assert len(containers(name, "worker")) <= MAXIMUM

        wait_for(
            "idle scale-down to fewer worker containers",
            lambda: len(containers(name, "worker")) < peak,
            180,
            explain,
        )
        assert client.gather(held) == [2 * i for i in range(20)]
        registered = {w["name"] for w in client.scheduler_info()["workers"].values()}
        assert registered <= set(containers(name, "worker"))

    down = subprocess.run(
        [*deployment["compose"], "down", "--timeout", "30"],  # type: ignore[misc]
        capture_output=True,
        text=True,
    )
    assert down.returncode == 0, down.stderr
    wait_for("no container of the deployment", lambda: not containers(name), 60, explain)
