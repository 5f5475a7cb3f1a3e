"""Worker pods that cannot be scheduled: said once, kept, and no more asked for.

The stand-in's node has 1.5 CPUs allocatable and each worker pod requests 1: the first pod
runs, the second stays Pending with kube-scheduler's ``PodScheduled=False`` condition. The real
scaler (fixed policy, two workers, a startup timeout of 10 s) must log that reason once, keep
the pending pod instead of deleting and recreating it at every timeout, and let it start as
soon as capacity is freed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from distributed import Client

from dask_deploy.testing.kubernetes import KubernetesStandIn
from kubernetes_support import (
    deployment_logs,
    kubernetes_values,
    render_kubernetes,
    running_pods,
    start_scheduler_and_scaler,
)
from process_support import free_port, wait_for

pytestmark = [pytest.mark.kubernetes, pytest.mark.integration]

BIN = Path(sys.executable).parent
INSUFFICIENT_CPU = "Unschedulable: 0/1 nodes are available: 1 Insufficient cpu."


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def unschedulable(api: KubernetesStandIn) -> set[str]:
    return {
        name
        for name, pod in api.pods().items()
        for condition in pod["status"].get("conditions", [])
        if condition["type"] == "PodScheduled" and condition["status"] == "False"
    }


def test_unschedulable_pods_are_reported_once_and_not_recreated(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    port, metrics_port = free_port(), free_port()
    scaler = {
        "policy": "fixed",
        "minimum": 2,
        "maximum": 2,
        "interval": 0.5,
        # Longer than a worker takes to boot on a loaded machine: the first pod must register
        # within it (counted from its creationTimestamp, whole seconds like the real API).
        "startup_timeout": 10,
        "metrics_port": metrics_port,
    }
    rendered = render_kubernetes(
        kubernetes_values("stuck", port, scaler=scaler), tmp_path / "rendered"
    )
    host_env = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(tmp_path)}
    with KubernetesStandIn(
        tmp_path / "api",
        allowed=rendered.granted(),
        host_env=host_env,
        entrypoints=rendered.entrypoints(),
        allocatable={"cpu": "1500m", "memory": "16Gi", "pods": "110"},
    ) as api:
        logs_dir = tmp_path / "logs"
        logs_dir.mkdir()
        logs = deployment_logs(api, logs_dir)
        worker_pod = rendered.worker_pod()
        assert worker_pod["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "1"
        processes += start_scheduler_and_scaler(
            api, rendered, tmp_path, port, "stuck-scheduler-7d9c5-x2k4q"
        )
        scaler_log = logs_dir / "scaler.log"

        def stuck_lines() -> list[str]:
            return [line for line in scaler_log.read_text().splitlines() if "cannot start" in line]

        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:

            def worker_names() -> set[str]:
                return {w["name"] for w in client.scheduler_info()["workers"].values()}

            wait_for("the pod that fits registers its worker", worker_names, 90, logs)
            (stuck,) = wait_for("the second pod is unschedulable", lambda: unschedulable(api))
            wait_for("the scaler says why it cannot start", stuck_lines, 30, logs)
            # Many startup timeouts later (counted in scaler ticks, not seconds)...
            ticks = metric(metrics_port, "dask_deploy_ticks_total")
            wait_for(
                "the scaler ticks through several startup timeouts",
                lambda: (
                    metric(metrics_port, "dask_deploy_ticks_total") >= ticks + 40
                ),  # 20 s: 2 startup timeouts
                90,
                logs,
            )
            # ...the stuck pod is still the one asked for: nothing deleted, nothing recreated.
            assert len(api.created) == 2, api.created
            assert api.deleted == []
            assert stuck_lines() == [
                line
                for line in stuck_lines()
                if f"cannot start {stuck}: {INSUFFICIENT_CPU}" in line
            ]
            assert len(stuck_lines()) == 1
            assert "not connected for" not in scaler_log.read_text()
            assert metric(metrics_port, "dask_deploy_stuck_workers") == 1

            # Capacity comes back (the running worker's pod ends): the stuck pod starts.
            (first,) = running_pods(api)
            api.kill_containers(first)
            wait_for(
                "the stuck pod starts and registers", lambda: stuck in worker_names(), 90, logs
            )
            wait_for(
                "the scaler notices",
                lambda: f"{stuck} no longer held back" in scaler_log.read_text(),
                30,
                logs,
            )
