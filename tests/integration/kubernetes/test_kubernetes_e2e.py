"""End to end against the Kubernetes API stand-in: burst up, go idle, exactly the retired pods go.

A real scheduler runs locally from the project's .venv; the real scaler (`dask-deploy scale`)
runs with the rendered scaler configuration, its kubernetes backend reaching the stand-in through
a kubeconfig. The stand-in enforces the rendered Role and validates every pod, then runs each
pod's `dask worker` command with the pod name from the downward API. Two substitutions stand in
for the cluster: the scheduler Service's DNS name becomes 127.0.0.1:<port> in the worker pod's
env, and the mounted ConfigMap files become local files.
"""

from __future__ import annotations

import operator
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from distributed import Client

from dask_deploy.testing.kubernetes import KubernetesStandIn
from kubernetes_support import (
    deployment_logs,
    kubernetes_values,
    local_worker_pod,
    render_kubernetes,
    running_pods,
    wait_for_retired_pods_deleted,
)
from process_support import BURST_SCALER_VALUES, free_port, start, wait_for

pytestmark = [pytest.mark.kubernetes, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


def test_burst_scales_up_idle_deletes_exactly_the_retired_pods(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    if not (REPO / "runtime" / "dask_deploy" / "_cli_scale.py").is_file():
        pytest.fail("dask-deploy scale (runtime/dask_deploy/_cli_scale.py) is missing")
    port, dashboard = free_port(), free_port()
    rendered = render_kubernetes(
        kubernetes_values("e2e", port, scaler=BURST_SCALER_VALUES), tmp_path / "rendered"
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

        # The ConfigMaps' files, as the scaler container would see them mounted.
        worker_pod = rendered.worker_pod()
        in_cluster = local_worker_pod(worker_pod, f"tcp://127.0.0.1:{port}")
        assert in_cluster == f"tcp://e2e-scheduler:{port}"
        (tmp_path / "worker-pod.yaml").write_text(yaml.safe_dump(worker_pod))
        config = rendered.scaler_config()
        assert config["scheduler"]["address"] == f"tcp://127.0.0.1:{port}"  # same pod: as is
        config["backend"]["options"] |= {
            "worker_template": str(tmp_path / "worker-pod.yaml"),
            "kubeconfig": str(api.write_kubeconfig(tmp_path / "kubeconfig")),
        }
        (tmp_path / "scaler-config.yaml").write_text(yaml.safe_dump(config))

        # The scheduler pod, as the downward API describes it to the scaler.
        owner_uid = api.add_owner()
        processes.append(
            start(
                [
                    str(BIN / "dask"),
                    "scheduler",
                    *("--preload", "dask_deploy.scheduler_preload"),  # as rendered
                    *("--host", "127.0.0.1", "--port", str(port)),
                    *("--dashboard-address", f"127.0.0.1:{dashboard}"),
                ],
                logs_dir / "scheduler.log",
            )
        )
        processes.append(
            start(
                [
                    str(BIN / "dask-deploy"),
                    "scale",
                    "--config",
                    str(tmp_path / "scaler-config.yaml"),
                ],
                logs_dir / "scaler.log",
                {
                    "DASK_DEPLOY_POD_NAME": "e2e-scheduler-7d9c5-x2k4q",
                    "DASK_DEPLOY_POD_UID": owner_uid,
                },
            )
        )

        def running() -> set[str]:
            return running_pods(api)

        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:

            def worker_names() -> set[str]:
                return {w["name"] for w in client.scheduler_info()["workers"].values()}

            # The minimum: one worker pod, its Dask worker named after the pod.
            wait_for("the minimum worker registers", worker_names, 90, logs)
            assert worker_names() <= set(api.created)
            first = next(iter(api.pods().values()))
            assert first["metadata"]["ownerReferences"][0]["uid"] == owner_uid

            # Functions the scheduler can import (this test module is not on its path).
            held = client.submit(operator.pow, 7, 2)
            burst = client.map(time.sleep, [0.5] * 40, pure=False)
            wait_for("more worker pods are created", lambda: len(running()) > 1, 90, logs)
            wait_for(
                "the new workers register under their pod names",
                lambda: len(worker_names()) > 1 and worker_names() <= set(api.created),
                60,
                logs,
            )
            peak = worker_names()
            assert client.gather(burst) == [None] * 40
            del burst

            # Idle: back to one; exactly the retired workers' pods were deleted.
            wait_for("idle workers are retired", lambda: len(running()) == 1, 90, logs)
            wait_for("the scheduler agrees", lambda: worker_names() == running(), 30, logs)
            survivors = running()
            wait_for_retired_pods_deleted(api, survivors, logs)
            assert set(api.deleted) >= peak - survivors
            assert len(api.created) == len(set(api.created))
            assert held.result() == 49  # held results survive the scale-down

        # Deleting the scheduler pod garbage-collects its workers.
        processes[-1].send_signal(signal.SIGTERM)
        processes[-1].wait(30)
        api.remove_owner(owner_uid)
        wait_for("the garbage collector deletes every worker pod", lambda: not api.pods(), 60, logs)
