"""A worker pod that ends by itself (its container killed) is deleted on the scaler's next
tick, with no scale action to carry it: the load is gone, so nothing replaces it."""

from __future__ import annotations

import os
import subprocess
import sys
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


def pod_phase(api: KubernetesStandIn, pod: str) -> str | None:
    """The pod's phase, or None once it is deleted."""
    manifest = api.pods().get(pod)
    return None if manifest is None else str(manifest["status"]["phase"])


def test_a_failed_pod_is_deleted_on_the_next_tick(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    scaler = {
        "minimum": 0,
        "maximum": 1,
        "interval": 0.5,
        "scale_down_window": 600,  # the idle worker is not retired during the test
        "metrics_port": free_port(),
    }
    rendered = render_kubernetes(
        kubernetes_values("ended", port, scaler=scaler), tmp_path / "rendered"
    )
    host_env = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(tmp_path)}
    with KubernetesStandIn(
        tmp_path / "api",
        allowed=rendered.granted(),
        host_env=host_env,
        entrypoints=rendered.entrypoints(),
    ) as api:
        logs_dir = tmp_path / "logs"
        logs_dir.mkdir()
        logs = deployment_logs(api, logs_dir)
        processes += start_scheduler_and_scaler(
            api, rendered, tmp_path, port, "ended-scheduler-7d9c5-x2k4q"
        )
        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:
            assert client.submit(sum, [1, 2]).result(timeout=120) == 3  # brings one worker
            (pod,) = wait_for("the worker pod runs", lambda: running_pods(api), 60, logs)
            api.kill_containers(pod)
            # The scaler may delete the ended pod before this looks: gone counts as ended here
            # (the next wait checks that it was deleted).
            wait_for(
                "the pod has ended",
                lambda: pod_phase(api, pod) in {"Failed", None},
                60,
                logs,
            )
            # No work, so no scale-up follows; the ended pod goes anyway.
            wait_for("the ended pod is deleted", lambda: pod in api.deleted, 30, logs)
            # The scaler logs the removal once the API has answered: wait for the line too.
            wait_for(
                "the scaler logs the removal",
                lambda: f"removed ended {pod}" in (logs_dir / "scaler.log").read_text(),
                30,
                logs,
            )
            assert len(api.created) == 1, api.created
