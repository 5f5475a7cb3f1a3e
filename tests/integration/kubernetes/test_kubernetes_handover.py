"""A worker pod deleted from outside (eviction, preemption, a drain, ``kubectl delete pod``)
hands the result it holds to another worker through the scheduler before it exits.

On the Kubernetes stand-in, which deletes a pod as the API server and kubelet do: SIGTERM to
the container's first process (here `dask worker`, as tini passes it on in the image), SIGKILL
to everything left after the pod's terminationGracePeriodSeconds. The rendered worker pod loads
dask_deploy.worker_preload into nanny and worker; the scheduler (with the fault ledger) and the
real scaler (fixed at two workers) run as local processes, as the other stand-in tests do.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from distributed import Client

from dask_deploy.testing.kubernetes import KubernetesStandIn
from handover_support import LEDGER_PRELOAD, assert_handed_over, hold_on, worker_names
from kubernetes_support import deployment_logs, render_kubernetes, start_scheduler_and_scaler
from process_support import free_port, wait_for

pytestmark = [pytest.mark.kubernetes, pytest.mark.integration]

BIN = Path(sys.executable).parent


def test_a_held_result_survives_deleting_its_workers_pod(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    values = {
        "deployment": "handover",
        "scheduler": {"port": port},
        # With the nanny, as rendered by default; the grace period covers handover + 10 s.
        "worker": {
            "threads": 1,
            "memory": "1Gi",
            "death_timeout": 20,
            "termination_grace_period": 60,
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
    rendered = render_kubernetes(values, tmp_path / "rendered")
    worker = rendered.worker_pod()["spec"]["containers"][0]
    assert "dask_deploy.worker_preload" in worker["args"]
    host_env = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(tmp_path)}
    with KubernetesStandIn(
        tmp_path / "api",
        allowed=rendered.granted(),
        host_env=host_env,
        entrypoints=rendered.entrypoints(),
    ) as api:
        (tmp_path / "logs").mkdir()
        logs = deployment_logs(api, tmp_path / "logs")
        processes += start_scheduler_and_scaler(
            api,
            rendered,
            tmp_path,
            port,
            "handover-scheduler-7d9c5-x2k4q",
            scheduler_preloads=[str(LEDGER_PRELOAD)],
        )
        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:
            wait_for("two worker pods register", lambda: len(worker_names(client)) == 2, 120, logs)
            leaver = sorted(worker_names(client))[0]  # its pod's name
            held = hold_on(client, leaver)
            # `kubectl delete pod`: no grace period given, so the pod's own applies.
            answer = requests.delete(
                f"{api.url}/api/v1/namespaces/default/pods/{leaver}", timeout=10
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["metadata"]["deletionGracePeriodSeconds"] == 60
            assert_handed_over(client, held, leaver, lambda: api.log_path(leaver).read_text(), logs)
            wait_for("the deleted pod is gone", lambda: leaver not in api.pods(), 90, logs)
