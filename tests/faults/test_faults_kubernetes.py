"""API faults against the Kubernetes stand-in: 5xx, 409, 403 on the scaler's calls, then recovery.

The real scheduler and the real ``dask-deploy scale`` run with the rendered configuration; the
stand-in (dask_deploy.testing.kubernetes) validates every request and fails the next calls of
one verb with the injected status. Each fault also SIGKILLs a worker pod's process, so the
scaler must list, delete the failed pod and create a replacement through the failing API.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from distributed import Client
from tally import TALLY, FaultRecord

from dask_deploy.render import render
from dask_deploy.testing.kubernetes import KubernetesStandIn
from dask_deploy.values import resolve_values
from process_support import free_port, start, tail

pytestmark = [pytest.mark.faults, pytest.mark.kubernetes, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MINIMUM, TARGET, MAXIMUM = 1, 2, 3
FAULTS = 20
FAULT_KINDS = [
    (verb, status) for verb in ("list", "create", "delete") for status in (500, 503, 409, 403)
]


def wait_for(
    what: str, condition: Callable[[], Any], timeout: float, logs: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}\n{logs()}")
        time.sleep(0.1)


def test_api_failures_then_recovery_keep_the_count_and_leave_no_pod(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    port, dashboard = free_port(), free_port()
    values = {
        "deployment": "faults",
        "scheduler": {"port": port},
        "worker": {
            "threads": 1,
            "memory": "1Gi",
            "death_timeout": 20,
            "extra_args": ["--no-nanny"],
        },
        "scaler": {"minimum": MINIMUM, "maximum": MAXIMUM, "interval": 0.3, "metrics_port": None},
    }
    out = tmp_path / "rendered"
    render(resolve_values("kubernetes", overrides=[values], root=REPO / "templates"), out)
    role = yaml.safe_load((out / "scaler-role.yaml").read_text())
    granted = {(v, r) for rule in role["rules"] for v in rule["verbs"] for r in rule["resources"]}
    host_env = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(tmp_path)}
    chooser = random.Random(9)

    with KubernetesStandIn(tmp_path / "api", allowed=granted, host_env=host_env) as api:
        logs_dir = tmp_path / "logs"
        logs_dir.mkdir()

        def logs() -> str:
            return "\n".join([tail(logs_dir / "scheduler.log"), tail(logs_dir / "scaler.log", 40)])

        worker_pod = yaml.safe_load(
            yaml.safe_load((out / "worker-configmap.yaml").read_text())["data"]["worker-pod.yaml"]
        )
        for variable in worker_pod["spec"]["containers"][0]["env"]:
            if variable["name"] == "DASK_SCHEDULER_ADDRESS":  # the Service's DNS name, here
                variable["value"] = f"tcp://127.0.0.1:{port}"
        (tmp_path / "worker-pod.yaml").write_text(yaml.safe_dump(worker_pod))
        config = yaml.safe_load(
            yaml.safe_load((out / "scaler-configmap.yaml").read_text())["data"][
                "scaler-config.yaml"
            ]
        )
        config["policy"] = {
            "name": "fixed",
            "minimum": MINIMUM,
            "maximum": MAXIMUM,
            "options": {"workers": TARGET},
        }
        config["backend"]["options"] |= {
            "worker_template": str(tmp_path / "worker-pod.yaml"),
            "kubeconfig": str(api.write_kubeconfig(tmp_path / "kubeconfig")),
        }
        (tmp_path / "scaler-config.yaml").write_text(yaml.safe_dump(config))
        owner_uid = api.add_owner()
        processes.append(
            start(
                [
                    str(BIN / "dask"),
                    "scheduler",
                    *("--preload", "dask_deploy.scheduler_preload"),
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
                {"DASK_DEPLOY_POD_NAME": "faults-scheduler-0", "DASK_DEPLOY_POD_UID": owner_uid},
            )
        )

        def running_pods() -> set[str]:
            return {
                name
                for name, pod in api.pods().items()
                if pod["status"]["phase"] == "Running"
                and "deletionTimestamp" not in pod["metadata"]
            }

        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:

            def worker_names() -> set[str]:
                return {w["name"] for w in client.scheduler_info()["workers"].values()}

            outside = 0.0
            last = time.monotonic()

            def converged() -> bool:
                nonlocal outside, last
                now, names = time.monotonic(), worker_names()
                if not MINIMUM <= len(names) <= MAXIMUM:
                    outside += now - last
                last = now
                running = running_pods()
                assert len(running) <= MAXIMUM, f"more pods than the maximum: {sorted(running)}"
                return len(running) == TARGET and names == running

            wait_for("the target is reached", converged, 90, logs)
            for number in range(FAULTS):
                verb, status = FAULT_KINDS[number % len(FAULT_KINDS)]
                api.inject(verb, status, times=chooser.randint(1, 3), reason="Injected")
                victim = chooser.choice(sorted(running_pods()))
                for process in api._pods[("default", victim)].processes:
                    os.killpg(process.pid, signal.SIGKILL)
                injected, outside = time.monotonic(), 0.0
                # Recovery counts only once the kill is visible to both the API and Dask.
                wait_for(
                    f"{victim} is gone",
                    lambda victim=victim: (
                        victim not in running_pods() and victim not in worker_names()
                    ),
                    60,
                    logs,
                )
                wait_for(f"recovery from {verb} -> {status}", converged, 60, logs)
                TALLY.faults.append(
                    FaultRecord(
                        backend="kubernetes",
                        kind=f"api-{verb}-{status}+pod-sigkill",
                        recovery_seconds=time.monotonic() - injected,
                        seconds_outside_bounds=outside,
                        keys_lost_from_retired_workers=0,
                        tasks_recomputed=0,
                    )
                )
            assert len(api.created) == len(set(api.created)), "a pod name was reused"

        # Teardown: the scheduler pod goes, its workers are garbage-collected.
        processes[-1].send_signal(signal.SIGTERM)
        processes[-1].wait(30)
        api.remove_owner(owner_uid)
        wait_for("every worker pod is deleted", lambda: not api.pods(), 60, logs)
        TALLY.instances_left_behind += len(api.pods())
