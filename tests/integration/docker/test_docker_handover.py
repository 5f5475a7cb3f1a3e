"""``docker stop`` of a worker container holding a result: the worker hands the result to
another worker through the scheduler before it exits, within the container's StopTimeout.

A real Docker engine and the project's worker image: the real scaler (``dask-deploy scale``,
configuration rendered from templates/docker, fixed at two workers) starts the worker
containers, which load dask_deploy.worker_preload into nanny and worker; a scheduler on the
host carries the fault ledger. ``docker stop`` without ``-t`` waits the container's own
StopTimeout (the rendered ``worker.stop_timeout``), then SIGKILLs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from distributed import Client

from handover_support import LEDGER_PRELOAD, assert_handed_over, hold_on, worker_names
from process_support import free_port, start, tail, wait_for
from render_support import render_over_defaults

pytestmark = [
    pytest.mark.docker,
    pytest.mark.integration,
    # The host's Python is a 3.11 patch release other than Debian's 3.11.2 in the images;
    # distributed warns about any difference, and the packages it compares are pinned alike.
    pytest.mark.filterwarnings(
        "ignore:Mismatched versions found:distributed.versions.VersionMismatchWarning"
    ),
]

BIN = Path(sys.executable).parent
STOP_TIMEOUT = 60


def inspect(name: str) -> dict[str, object]:
    shown = subprocess.run(["docker", "inspect", name], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    return dict(json.loads(shown.stdout)[0])


def remove_deployment(deployment: str) -> None:
    label = f"label=dask-deploy.deployment={deployment}"
    listed = subprocess.run(
        ["docker", "ps", "--all", "--quiet", "--filter", label], capture_output=True, text=True
    )
    if listed.stdout.split():
        remove = ["docker", "rm", "--force", "--volumes", *listed.stdout.split()]
        subprocess.run(remove, capture_output=True)


def test_a_held_result_survives_docker_stop_of_its_worker_container(
    docker_images: dict[str, str], tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    deployment = f"handover{time.time_ns() % 10**6}"
    port = free_port()
    values = {
        "deployment": deployment,
        "scheduler": {"port": port, "dashboard_port": free_port()},
        # With the nanny, as rendered by default; the grace period covers handover + 10 s.
        "worker": {
            "threads": 1,
            "memory": "512MiB",
            "cpus": 1,
            "death_timeout": 15,
            "stop_timeout": STOP_TIMEOUT,
            "handover_timeout": 30,
        },
        "scaler": {
            "policy": "fixed",
            "minimum": 2,
            "maximum": 2,
            "interval": 0.5,
            "startup_timeout": 120,
            "metrics_port": free_port(),
        },
    }
    out = tmp_path / "rendered"
    render_over_defaults("docker", values, out)
    logs_dir = tmp_path / "logs"
    logs_dir.mkdir()
    processes.append(
        start(
            [
                str(BIN / "dask"),
                "scheduler",
                *("--preload", str(LEDGER_PRELOAD)),
                *("--preload", "dask_deploy.scheduler_preload"),
                *("--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"),
            ],
            logs_dir / "scheduler.log",
        )
    )
    config = yaml.safe_load((out / "scaler-config.yaml").read_text())
    assert config["backend"]["options"]["image"] == docker_images["worker"]
    (tmp_path / "scaler-config.yaml").write_text(yaml.safe_dump(config))
    scaler = start(
        [str(BIN / "dask-deploy"), "scale", "--config", str(tmp_path / "scaler-config.yaml")],
        logs_dir / "scaler.log",
    )
    processes.append(scaler)

    def logs() -> str:
        containers = subprocess.run(
            ["docker", "ps", "--all", "--filter", f"label=dask-deploy.deployment={deployment}"],
            capture_output=True, text=True,
        ).stdout  # fmt: skip
        return "\n".join([tail(logs_dir / "scheduler.log"), tail(logs_dir / "scaler.log", 40),
                          containers])  # fmt: skip

    try:
        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:
            wait_for(
                "two worker containers register", lambda: len(worker_names(client)) == 2, 180, logs
            )
            leaver = sorted(worker_names(client))[0]  # its container's name
            assert inspect(leaver)["Config"]["StopTimeout"] == STOP_TIMEOUT  # type: ignore[index]
            held = hold_on(client, leaver)
            # Its output, kept past the scaler's removal of the exited container.
            leaver_log = logs_dir / "leaver.log"
            with leaver_log.open("wb") as sink:
                following = subprocess.Popen(
                    ["docker", "logs", "--follow", leaver], stdout=sink, stderr=subprocess.STDOUT
                )
            processes.append(following)
            stopped = subprocess.run(["docker", "stop", leaver], capture_output=True, text=True)
            assert stopped.returncode == 0, stopped.stderr
            assert_handed_over(
                client, held, leaver, lambda: leaver_log.read_text(errors="replace"), logs
            )
    finally:
        scaler.terminate()  # first, so that it starts no more containers
        scaler.wait(30)
        remove_deployment(deployment)
