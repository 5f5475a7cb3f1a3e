"""DeployCluster on a real Docker engine: the rendered compose file brought up by the cluster.

The cluster renders the docker templates, runs `docker compose up --detach` as the backend's
README says, changes the running scaler's policy through the scheduler, and on close retires
the worker containers through the scaler before `docker compose down`.
"""

from __future__ import annotations

import operator
import os
import time
from pathlib import Path

import pytest
from distributed import Client

from cluster_support import state_root
from dask_deploy import DeployCluster
from docker_support import containers, deployment_logs, docker_compose
from process_support import free_port, wait_for

__all__ = ["state_root"]  # the fixture
pytestmark = [
    pytest.mark.docker,
    pytest.mark.integration,
    # The host's Python is a 3.11 patch release other than Debian's 3.11.2 in the images.
    pytest.mark.filterwarnings(
        "ignore:Mismatched versions found:distributed.versions.VersionMismatchWarning"
    ),
]


def test_deploy_cluster_on_docker_computes_scales_and_closes_cleanly(
    docker_images: dict[str, str], state_root: Path
) -> None:
    docker_compose()  # the launcher runs Compose; Docker Engine alone (docker.io) has none
    name = f"api{time.time_ns() % 10**8}"
    settings = {
        "scheduler.port": free_port(),
        "scheduler.dashboard_port": free_port(),
        "worker.threads": 1,
        "worker.memory": "512MiB",
        # The worker preload's handover (as rendered by default), shortened; the stop timeout
        # covers it and the 10 s a nanny may take to stop its worker after.
        "worker.stop_timeout": 20,
        "worker.handover_timeout": 10,
        "docker.socket_gid": os.stat("/var/run/docker.sock").st_gid,
        "scaler.interval": 0.5,
        "scaler.startup_timeout": 120,
        "scaler.metrics_port": None,
        "scaler.cleanup_on_exit": True,
    }
    sets = [f"{key}={'null' if v is None else str(v).lower() if isinstance(v, bool) else v}"
            for key, v in settings.items()]  # fmt: skip
    cluster = DeployCluster("docker", set=sets, name=name, timeout=120)
    try:
        assert "compose.yaml" in cluster.manifests()
        cluster.adapt(minimum=0, maximum=2, scale_down_window=2)
        with Client(cluster, timeout="60s") as client:
            futures = client.map(time.sleep, [1.0] * 16, pure=False)
            wait_for(
                "worker containers started",
                lambda: len(cluster.scheduler_info["workers"]) >= 1,
                timeout=120,
                logs=lambda: deployment_logs(name),
            )
            client.gather(futures)
            assert client.submit(operator.mul, 6, 7).result() == 42
            del futures
            wait_for(
                "idle: every worker retired and its container removed",
                lambda: not cluster.scheduler_info["workers"] and not containers(name, "worker"),
                timeout=120,
                logs=lambda: deployment_logs(name),
            )
            cluster.scale(1)
            wait_for(
                "the scaler kept exactly one worker container",
                lambda: (
                    len(containers(name, "worker")) == 1
                    and len(cluster.scheduler_info["workers"]) == 1
                ),
                timeout=120,
                logs=lambda: deployment_logs(name),
            )
    finally:
        cluster.close()
    assert containers(name) == {}, "no container of the deployment is left"
