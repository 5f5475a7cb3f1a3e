"""TLS end to end on a real Docker engine, with the hardened containers the templates render.

A throwaway CA and certificate in tmp_path (the key owned by uid 10001, mode 0400, as the
README asks), the docker templates rendered with `tls.enabled` pointing at those files, and
the compose file started with docker-compose: the scheduler listens on tls://, the scaler
reaches it over TLS and starts worker containers that register with tls:// addresses under
their container names, then retires them through the scheduler before removing them. A client
with the certificates computes; a client without them is refused. Every container runs as uid
10001 with a read-only root, no-new-privileges, no capabilities and its limits.
"""

from __future__ import annotations

import json
import operator
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client

from docker_support import compose_deployment, containers, deployment_logs, services_running
from process_support import free_port, wait_for
from tls_support import (
    Certificates,
    assert_only_certified_clients_get_in,
    client_security,
    make_certificates,
    worker_addresses,
)

pytestmark = [
    pytest.mark.docker,
    pytest.mark.integration,
    pytest.mark.filterwarnings(
        "ignore:Mismatched versions found:distributed.versions.VersionMismatchWarning"
    ),
]
IMAGE_USER = 10001
WORKER_MEMORY = 512 * 2**20


def full_log(name: str) -> str:
    out = subprocess.run(["docker", "logs", name], capture_output=True, text=True, check=True)
    return out.stdout + out.stderr


def inspect(name: str) -> dict[str, Any]:
    out = subprocess.run(["docker", "inspect", name], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout)[0])


def assert_hardened(name: str) -> dict[str, Any]:
    """The container runs as the image's user, confined and limited; returns its inspect data."""
    container = inspect(name)
    host = container["HostConfig"]
    assert container["Config"]["User"] == f"{IMAGE_USER}:{IMAGE_USER}", name
    assert host["ReadonlyRootfs"] is True, name
    assert "/tmp" in (host["Tmpfs"] or {}), name
    assert host["SecurityOpt"] == ["no-new-privileges:true"], name
    assert host["CapDrop"] == ["ALL"], name
    assert host["Memory"] > 0 and host["NanoCpus"] > 0, name
    assert host["Privileged"] is False, name
    return container


@pytest.fixture
def files(tmp_path: Path) -> Certificates:
    certificates = make_certificates(tmp_path / "tls")
    # The containers run as uid 10001: hand it the certificate and key (0400), as a user would.
    for path in (certificates.cert, certificates.key):
        os.chown(path, IMAGE_USER, IMAGE_USER)
    certificates.key.chmod(0o400)
    return certificates


@pytest.fixture
def deployment(
    docker_images: dict[str, str], files: Certificates, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    """Render with TLS on, `docker-compose up -d`; down and remove everything after."""
    name = f"tls{time.time_ns() % 10**8}"
    port = free_port()
    settings = {
        "deployment": name,
        "scheduler.port": port,
        "scheduler.dashboard_port": free_port(),
        "worker.threads": 1,
        "worker.memory": "512MiB",
        "worker.cpus": 1,
        # The worker preload's handover (as rendered by default), shortened; the stop timeout
        # covers it and the 10 s a nanny may take to stop its worker after.
        "worker.stop_timeout": 20,
        "worker.handover_timeout": 10,
        "docker.socket_gid": os.stat("/var/run/docker.sock").st_gid,
        "scaler.minimum": 0,
        "scaler.maximum": 2,
        "scaler.interval": 0.5,
        "scaler.scale_down_window": 2,
        "scaler.startup_timeout": 60,
        "scaler.metrics_port": free_port(),
        "scaler.cleanup_on_exit": "true",
        "tls.enabled": "true",
        "tls.ca_file": files.ca,
        "tls.cert_file": files.cert,
        "tls.key_file": files.key,
    }
    with compose_deployment(settings, tmp_path / "rendered") as compose:
        yield {"name": name, "port": port, "compose": compose}


def test_tls_scheduler_scaler_and_hardened_workers_refuse_clients_without_certificates(
    deployment: dict[str, Any], files: Certificates, tmp_path: Path
) -> None:
    name, port = str(deployment["name"]), int(deployment["port"])

    def explain() -> str:
        return deployment_logs(name)

    wait_for("scheduler and scaler running", lambda: services_running(name), 60, explain)
    for service in (f"{name}-scheduler", f"{name}-scaler"):
        assert_hardened(service)

    address = f"tls://127.0.0.1:{port}"
    with Client(address, security=client_security(files), timeout="60s") as client:
        assert client.scheduler.address == address
        held = client.map(operator.mul, range(10), [3] * 10, pure=False)
        burst = client.map(time.sleep, [1.0] * 16, pure=False)

        def registered() -> dict[str, str]:
            return worker_addresses(client)

        wait_for("two worker containers register", lambda: len(registered()) == 2, 90, explain)
        # Inspected while the burst keeps both busy: once it ends, the 2 s window may retire
        # one and its container be removed under the inspection.
        workers = registered()
        worker_containers = containers(name, "worker")
        assert set(workers) <= set(worker_containers), (workers, worker_containers)
        assert all(a.startswith("tls://127.0.0.1:") for a in workers.values()), workers
        scratch_volumes = set()
        for worker in workers:
            container = assert_hardened(worker)
            assert container["HostConfig"]["Memory"] == WORKER_MEMORY
            command = container["Config"]["Cmd"]
            assert command[command.index("--memory-limit") + 1] == str(WORKER_MEMORY)
            assert command[command.index("--name") + 1] == worker
            scratch_volumes |= {
                m["Name"] for m in container["Mounts"] if m["Destination"] == "/home/dask"
            }
        info = client.scheduler_info()["workers"]
        assert {w["memory_limit"] for w in info.values()} == {WORKER_MEMORY}
        client.gather(burst)
        assert client.gather(held) == [3 * i for i in range(10)]

        assert_only_certified_clients_get_in(address, files, tmp_path)

        # Idle: the scaler retires workers through the scheduler, then removes their
        # containers; the results the client holds keep one, and survive the other's retirement.
        wait_for(
            "idle scale-down to one worker container",
            lambda: len(registered()) == 1 and set(containers(name, "worker")) == set(registered()),
            60,
            explain,
        )
        assert client.gather(held) == [3 * i for i in range(10)]
        del held, burst
        wait_for(
            "with nothing held, no worker container",
            lambda: not containers(name, "worker") and not registered(),
            60,
            explain,
        )

    scaler_log, scheduler_log = full_log(f"{name}-scaler"), full_log(f"{name}-scheduler")
    for worker, worker_address in workers.items():
        assert re.search(rf"retired .*\b{re.escape(worker)}\b", scaler_log), scaler_log
        assert f"Retired worker '{worker_address}'" in scheduler_log, worker_address
    unremoved = subprocess.run(
        ["docker", "volume", "ls", "--quiet"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert not scratch_volumes & set(unremoved), "scratch volumes outlive their workers"
