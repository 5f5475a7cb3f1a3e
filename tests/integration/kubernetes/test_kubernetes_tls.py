"""TLS end to end against the Kubernetes API stand-in: certificates from a Secret, tls:// only.

Rendered with ``tls.enabled``: the scheduler container's own command and args (``--protocol tls``
and the certificate flags under the Secret's mount path) run locally; the scaler runs with the
rendered scaler configuration, whose ``scheduler.security`` names the same mounted files; each
worker pod the scaler creates mounts the Secret, which the stand-in serves from the Secret object
the test creates (as ``kubectl create secret generic`` would). Substitutions for the cluster, as
in test_kubernetes_e2e.py: the Service's DNS name becomes 127.0.0.1, the scheduler binds to the
loopback, and the Secret and ConfigMaps mounted into the scheduler pod are local files.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from distributed import Client

from dask_deploy.testing.kubernetes import ApiError, KubernetesStandIn, map_mounts
from kubernetes_support import (
    deployment_logs,
    kubernetes_values,
    local_worker_pod,
    render_kubernetes,
    running_pods,
    wait_for_retired_pods_deleted,
)
from process_support import BURST_SCALER_VALUES, free_port, start, tail, wait_for
from tls_support import (
    Certificates,
    assert_only_certified_clients_get_in,
    burst_scales_up_over_tls,
    client_security,
    make_certificates,
    worker_addresses,
)

pytestmark = [pytest.mark.kubernetes, pytest.mark.integration]

BIN = Path(sys.executable).parent
SECRET = "e2e-tls"


def secret_manifest(name: str, files: dict[str, Path]) -> dict[str, Any]:
    """What `kubectl create secret generic NAME --from-file=...` sends."""
    data = {key: base64.b64encode(path.read_bytes()).decode() for key, path in files.items()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "Opaque",
        "data": data,
    }


def tls_files(certificates: Certificates) -> dict[str, Path]:
    return {"ca.crt": certificates.ca, "tls.crt": certificates.cert, "tls.key": certificates.key}


def reader_pod(name: str) -> dict[str, Any]:
    """A pod that copies the mounted Secret's certificate into its emptyDir."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "reader",
                    "image": "unused",
                    "command": ["sh", "-c", 'cat "$0/tls.crt" > "$1/copy"', "/etc/tls", "/tmp"],
                    "volumeMounts": [
                        {"name": "tls", "mountPath": "/etc/tls", "readOnly": True},
                        {"name": "out", "mountPath": "/tmp"},
                    ],
                }
            ],
            "volumes": [
                {"name": "tls", "secret": {"secretName": SECRET, "defaultMode": 0o440}},
                {"name": "out", "emptyDir": {}},
            ],
        },
    }


def test_stand_in_mounts_a_secret_and_keeps_a_pod_pending_without_it(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path / "certs")
    with KubernetesStandIn(tmp_path / "api") as api:
        with pytest.raises(ApiError, match="Secret is invalid"):
            api.create_secret({**secret_manifest(SECRET, {}), "stringdata": {"ca.crt": "x"}})
        code, _ = api.handle("POST", "/api/v1/namespaces/default/pods", reader_pod("reader"))
        assert code == 201
        pending = api.pods()["reader"]["status"]
        assert (
            pending["phase"] == "Pending" and f'secret "{SECRET}" not found' in pending["message"]
        )

        api.create_secret(secret_manifest(SECRET, tls_files(certificates)))
        with pytest.raises(ApiError, match="already exists"):
            api.create_secret(secret_manifest(SECRET, tls_files(certificates)))
        code, _ = api.handle("POST", "/api/v1/namespaces/default/pods", reader_pod("reader-2"))
        assert code == 201
        logs = lambda: tail(api.log_path("reader-2"))  # noqa: E731
        wait_for(
            "the pod succeeds",
            lambda: api.pods()["reader-2"]["status"]["phase"] == "Succeeded",
            10,
            logs,
        )
        mounted = api.volume_path("reader-2", "tls")
        assert sorted(p.name for p in mounted.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
        assert (mounted / "tls.key").stat().st_mode & 0o777 == 0o440
        copy = api.volume_path("reader-2", "out") / "copy"
        assert copy.read_bytes() == certificates.cert.read_bytes()


def test_tls_scheduler_scaler_and_workers_from_a_secret(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    port, dashboard = free_port(), free_port()
    values = kubernetes_values(
        "e2e",
        port,
        scheduler={"port": port, "dashboard_port": dashboard},
        scaler=BURST_SCALER_VALUES,
        tls={"enabled": True, "secret_name": SECRET, "mount_path": "/etc/dask/tls"},
    )
    rendered = render_kubernetes(values, tmp_path / "rendered")
    certificates = make_certificates(tmp_path / "secret")
    # The scheduler pod's Secret volume, mounted at the rendered mount path.
    mounts = {"/etc/dask/tls": certificates.ca.parent}

    scheduler_argv = rendered.argv("scheduler")
    assert scheduler_argv[scheduler_argv.index("--protocol") + 1] == "tls"
    for flag, key in (
        ("--tls-ca-file", "ca.crt"),
        ("--tls-cert", "tls.crt"),
        ("--tls-key", "tls.key"),
    ):
        assert scheduler_argv[scheduler_argv.index(flag) + 1] == f"/etc/dask/tls/{key}"
    scheduler_argv = [map_mounts(arg, mounts) for arg in scheduler_argv]
    # The pod's own network namespace, here: the loopback.
    scheduler_argv[scheduler_argv.index("--dashboard-address") + 1] = f"127.0.0.1:{dashboard}"
    scheduler_argv += ["--host", "127.0.0.1"]

    worker_pod = rendered.worker_pod()
    (secret_volume,) = [v for v in worker_pod["spec"]["volumes"] if "secret" in v]
    assert secret_volume["secret"]["secretName"] == SECRET
    in_cluster = local_worker_pod(worker_pod, f"tls://127.0.0.1:{port}")
    assert in_cluster == f"tls://e2e-scheduler:{port}"
    (tmp_path / "worker-pod.yaml").write_text(yaml.safe_dump(worker_pod))

    config = rendered.scaler_config()
    assert config["scheduler"]["address"] == f"tls://127.0.0.1:{port}"
    security = config["scheduler"]["security"]
    assert security == {
        "ca_file": "/etc/dask/tls/ca.crt",
        "cert_file": "/etc/dask/tls/tls.crt",
        "key_file": "/etc/dask/tls/tls.key",
    }
    config["scheduler"]["security"] = {k: map_mounts(v, mounts) for k, v in security.items()}
    host_env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path)}

    with KubernetesStandIn(
        tmp_path / "api",
        allowed=rendered.granted(),
        host_env=host_env,
        entrypoints=rendered.entrypoints(),
    ) as api:
        api.create_secret(secret_manifest(SECRET, tls_files(certificates)))
        config["backend"]["options"] |= {
            "worker_template": str(tmp_path / "worker-pod.yaml"),
            "kubeconfig": str(api.write_kubeconfig(tmp_path / "kubeconfig")),
        }
        (tmp_path / "scaler-config.yaml").write_text(yaml.safe_dump(config))
        scaler_argv = rendered.argv("scaler")
        scaler_argv[scaler_argv.index("--config") + 1] = str(tmp_path / "scaler-config.yaml")
        logs_dir = tmp_path / "logs"
        logs_dir.mkdir()

        logs = deployment_logs(api, logs_dir)

        owner_uid = api.add_owner()
        processes.append(
            start([str(BIN / scheduler_argv[0]), *scheduler_argv[1:]], logs_dir / "scheduler.log")
        )
        processes.append(
            start(
                [str(BIN / scaler_argv[0]), *scaler_argv[1:]],
                logs_dir / "scaler.log",
                {
                    "DASK_DEPLOY_POD_NAME": "e2e-scheduler-7d9c5-x2k4q",
                    "DASK_DEPLOY_POD_UID": owner_uid,
                },
            )
        )
        address = f"tls://127.0.0.1:{port}"

        def running() -> set[str]:
            return running_pods(api)

        wait_for("the minimum worker pod runs", running, 60, logs)
        with Client(address, security=client_security(certificates), timeout=60) as client:
            assert client.scheduler.address.startswith("tls://")
            held, burst, peak = burst_scales_up_over_tls(client, lambda: api.created, logs)
            # Each worker pod got the Secret as files under its own mount.
            for name in peak:
                assert (
                    api.volume_path(name, "tls") / "tls.key"
                ).read_bytes() == certificates.key.read_bytes()
            assert client.gather(burst) == [None] * 40
            del burst

            wait_for("idle workers are retired", lambda: len(running()) == 1, 90, logs)
            wait_for(
                "the scheduler agrees",
                lambda: set(worker_addresses(client)) == running(),
                30,
                logs,
            )
            survivors = running()
            wait_for_retired_pods_deleted(api, survivors, logs)
            assert set(api.deleted) >= set(peak) - survivors
            assert held.result() == 49  # retired through the scheduler: the result moved first
        scheduler_log = (logs_dir / "scheduler.log").read_text()
        assert re.search(r"Retire worker", scheduler_log), tail(logs_dir / "scheduler.log", 40)

        assert_only_certified_clients_get_in(address, certificates, tmp_path)
        wait_for(
            "the scheduler logs the refused handshake",
            lambda: "peer did not return a certificate" in (logs_dir / "scheduler.log").read_text(),
            10,
            logs,
        )
