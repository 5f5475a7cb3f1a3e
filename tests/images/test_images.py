"""Each built image, inspected from inside with testinfra (docker backend) and from outside.

One container per role, started by its own entrypoint on the host network and 127.0.0.1:
a scheduler, a worker registered with it, and a scaler running the ``fixed`` policy with the
Docker backend at minimum 0 (so it starts nothing) and its metrics port open.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import testinfra

from docker_support import (
    container_logs,
    package_version,
    pinned,
    remove_test_containers,
    run_container,
)
from process_support import free_port

pytestmark = pytest.mark.docker
WORKER_IMAGE_LIMIT = 300 * 1000 * 1000
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "tcc", "x86_64-linux-gnu-gcc")


def wait_listening(port: int, name: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"{name} did not listen on 127.0.0.1:{port}:\n{container_logs(name)}")


SCALER_CONFIG = """\
deployment: {deployment}
scheduler:
  address: tcp://127.0.0.1:{scheduler_port}
policy:
  name: fixed
  minimum: 0
  maximum: 0
loop:
  interval: 1.0
  startup_timeout: 60
  cleanup_on_exit: false
metrics:
  host: 127.0.0.1
  port: {metrics_port}
backend:
  name: docker
  options:
    image: {worker_image}
"""


@pytest.fixture(scope="module")
def role_containers(docker_images: dict[str, str]) -> Iterator[dict[str, tuple[str, int]]]:
    """Container name and listening port of each role."""
    suffix = f"{time.time_ns() % 10**9}"
    scheduler_port, dashboard_port, worker_port, metrics_port = (free_port() for _ in range(4))
    scheduler = f"img-scheduler-{suffix}"
    worker = f"img-worker-{suffix}"
    scaler = f"img-scaler-{suffix}"
    config = SCALER_CONFIG.format(
        deployment=f"img{suffix}",
        scheduler_port=scheduler_port,
        metrics_port=metrics_port,
        worker_image=docker_images["worker"],
    )
    try:
        run_container(
            docker_images["scheduler"],
            "--host=127.0.0.1",
            f"--port={scheduler_port}",
            f"--dashboard-address=127.0.0.1:{dashboard_port}",
            name=scheduler,
            env=f"DASK_DEPLOY_HEALTH_URL=http://127.0.0.1:{dashboard_port}/health",
        )
        wait_listening(scheduler_port, scheduler)
        run_container(
            docker_images["worker"],
            f"tcp://127.0.0.1:{scheduler_port}",
            f"--name={worker}",
            "--host=127.0.0.1",
            f"--worker-port={worker_port}",
            "--no-dashboard",
            name=worker,
        )
        run_container(
            docker_images["scaler"],
            name=scaler,
            env=f"DASK_DEPLOY_SCALER_CONFIG={config}",
            volume="/var/run/docker.sock:/var/run/docker.sock",
            group_add=str(os.stat("/var/run/docker.sock").st_gid),
        )
        yield {
            "scheduler": (scheduler, scheduler_port),
            "worker": (worker, worker_port),
            "scaler": (scaler, metrics_port),
        }
    finally:
        remove_test_containers()


@pytest.fixture(params=["scheduler", "worker", "scaler"])
def role(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def host(role: str, role_containers: dict[str, tuple[str, int]]) -> testinfra.host.Host:
    name, _ = role_containers[role]
    return testinfra.get_host(f"docker://{name}")


def test_the_entrypoint_starts_the_role_and_listens(
    role: str, role_containers: dict[str, tuple[str, int]]
) -> None:
    name, port = role_containers[role]
    wait_listening(port, name)


def test_runs_as_non_root(host: testinfra.host.Host, role: str) -> None:
    assert host.user().uid == 10001
    assert host.user().name == "dask"


def test_tini_is_pid_1_and_runs_the_role(host: testinfra.host.Host, role: str) -> None:
    argv = host.file("/proc/1/cmdline").content_string.split("\0")
    assert argv[:2] == ["/usr/bin/tini", "--"]
    expected = {"scheduler": ["dask", "scheduler"], "worker": ["dask", "worker"]}
    assert argv[2:4] == expected.get(role, ["dask-deploy", "scale"])


def test_installed_distributed_matches_the_pin(host: testinfra.host.Host, role: str) -> None:
    version = host.check_output(
        "python3 -c 'import importlib.metadata as m; print(m.version(\"distributed\"))'"
    )
    assert version == pinned("distributed")


def test_no_compiler_and_no_pip_in_the_final_image(host: testinfra.host.Host, role: str) -> None:
    assert [tool for tool in (*COMPILERS, "pip", "pip3") if host.exists(tool)] == []


def test_worker_carries_numpy_and_pandas_and_the_others_do_not(
    host: testinfra.host.Host, role: str
) -> None:
    script = (
        "import importlib.util as u; print(bool(u.find_spec('numpy')), bool(u.find_spec('pandas')))"
    )
    found = host.check_output(f'python3 -c "{script}"')
    assert found == ("True True" if role == "worker" else "False False")
    if role == "worker":
        assert (
            host.check_output(
                "python3 -c 'import numpy, pandas; print(numpy.__version__, pandas.__version__)'"
            )
            == f"{pinned('numpy')} {pinned('pandas')}"
        )


def inspect(image: str) -> dict[str, object]:
    output = subprocess.run(
        ["docker", "image", "inspect", image], capture_output=True, text=True, check=True
    )
    return dict(json.loads(output.stdout)[0])


def test_oci_labels_and_user(docker_images: dict[str, str], role: str) -> None:
    config = inspect(docker_images[role])["Config"]
    assert isinstance(config, dict)
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == package_version()
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert labels["org.opencontainers.image.revision"] not in ("", "unknown")
    assert labels["org.opencontainers.image.title"] == f"dask-deploy-{role}"
    assert config["User"] == "10001:10001"


def test_worker_image_is_under_300_mb(docker_images: dict[str, str]) -> None:
    size = inspect(docker_images["worker"])["Size"]
    assert isinstance(size, int)
    assert size < WORKER_IMAGE_LIMIT, f"worker image is {size / 1e6:.0f} MB"


def test_scheduler_healthcheck_turns_healthy(
    role_containers: dict[str, tuple[str, int]],
) -> None:
    name, _ = role_containers["scheduler"]
    deadline = time.monotonic() + 60
    status = ""
    while time.monotonic() < deadline:
        status = subprocess.run(
            ["docker", "inspect", "--format", "{{.State.Health.Status}}", name],
            capture_output=True,
            text=True,
        ).stdout.strip()
        if status == "healthy":
            return
        time.sleep(1)
    pytest.fail(f"scheduler health is {status!r}:\n{container_logs(name)}")
