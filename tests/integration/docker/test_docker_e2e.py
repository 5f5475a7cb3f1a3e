"""End to end on a real Docker engine: the rendered compose file, started with docker-compose.

Scheduler container + scaler container (`dask-deploy scale` with the Docker backend, reaching the
engine through the bind-mounted socket) + a Client on the host, all on the host network and
127.0.0.1. A burst scales worker containers up, idleness scales them down through retirement,
results the client holds survive, and teardown leaves no container of the deployment.
"""

from __future__ import annotations

import operator
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client

from docker_support import compose_deployment, containers, deployment_logs, services_running
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


@pytest.fixture
def deployment(docker_images: dict[str, str], tmp_path: Path) -> Iterator[dict[str, object]]:
    """Render with test values, `docker-compose up -d`; down and remove everything after."""
    name = f"e2e{time.time_ns() % 10**8}"
    scheduler_port = free_port()
    settings = {
        "deployment": name,
        "scheduler.port": scheduler_port,
        "scheduler.dashboard_port": free_port(),
        "worker.threads": 1,
        "worker.memory": "512MiB",
        # The worker preload's handover (as rendered by default), shortened; the stop timeout
        # covers it and the 10 s a nanny may take to stop its worker after.
        "worker.stop_timeout": 20,
        "worker.handover_timeout": 10,
        "docker.socket_gid": os.stat("/var/run/docker.sock").st_gid,
        "scaler.minimum": 0,
        "scaler.maximum": MAXIMUM,
        "scaler.interval": 0.5,
        "scaler.scale_down_window": 3,
        "scaler.startup_timeout": 120,
        "scaler.metrics_port": free_port(),
        "scaler.cleanup_on_exit": "true",
    }
    with compose_deployment(settings, tmp_path / "rendered") as compose:
        yield {"name": name, "address": f"tcp://127.0.0.1:{scheduler_port}", "compose": compose}


def test_burst_scales_worker_containers_up_idle_scales_down_and_teardown_is_clean(
    deployment: dict[str, object],
) -> None:
    name = str(deployment["name"])

    def explain() -> str:
        return deployment_logs(name)

    wait_for("scheduler and scaler running", lambda: services_running(name), 60, explain)
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
