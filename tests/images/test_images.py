"""Each built image, inspected from inside with testinfra (docker backend) and from outside.

One container per role, started by its own entrypoint on the host network and 127.0.0.1:
a scheduler (with its dashboard), a worker registered with it, and a scaler running the
``fixed`` policy with the Docker backend at minimum 0 (so it starts nothing) and its metrics port
open. A client container from the worker image then runs dask.array and dask.dataframe work on
that worker, as a user's notebook would.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import testinfra
import yaml

from dask_deploy.testing.kubernetes import KubernetesStandIn
from docker_support import (
    LABEL_TEST,
    container_logs,
    package_version,
    pinned,
    remove_test_containers,
    run_container,
)
from process_support import free_port

pytestmark = pytest.mark.docker
WORKER_IMAGE_LIMIT = 400 * 1000 * 1000
SCALER_IMAGE_LIMIT = 180 * 1000 * 1000
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
    """Container name and listening port of each role, and the scheduler's dashboard port."""
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
            "dashboard": (scheduler, dashboard_port),
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


#: Which role carries which library: the worker the array and dataframe stack; the scheduler
#: the same (it deserializes the graphs clients send) and bokeh for its dashboard; the scaler none.
CARRIED = {
    "scheduler": {"numpy": True, "pandas": True, "pyarrow": True, "bokeh": True},
    "worker": {"numpy": True, "pandas": True, "pyarrow": True, "bokeh": False},
    "scaler": {"numpy": False, "pandas": False, "pyarrow": False, "bokeh": False},
}


def test_each_role_carries_its_libraries_at_the_pinned_versions(
    host: testinfra.host.Host, role: str
) -> None:
    script = (
        "import importlib.metadata as m, json, sys\n"
        "def version(name):\n"
        "    try:\n"
        "        return m.version(name)\n"
        "    except m.PackageNotFoundError:\n"
        "        return None\n"
        "print(json.dumps({n: version(n) for n in sys.argv[1:]}))"
    )
    names = " ".join(sorted(CARRIED[role]))
    found = json.loads(host.check_output(f"python3 -c '{script}' {names}"))
    expected = {name: pinned(name) if carried else None for name, carried in CARRIED[role].items()}
    assert found == expected


def test_scaler_imports_the_client_of_every_backend_it_runs_in(
    role_containers: dict[str, tuple[str, int]],
) -> None:
    name, _ = role_containers["scaler"]
    imported = testinfra.get_host(f"docker://{name}").run(
        "python3 -c 'import docker, kubernetes.client, kubernetes.config, marathon; "
        "from dask_deploy.backends import docker, kubernetes, marathon, slurm'"
    )
    assert imported.rc == 0, imported.stderr


def test_the_worker_image_loads_the_handover_preload_and_no_more_of_dask_deploy(
    role_containers: dict[str, tuple[str, int]],
) -> None:
    # What `--preload-nanny/--preload dask_deploy.worker_preload` needs, in the worker image
    # itself: the module, over distributed alone (none of dask-deploy's own dependencies).
    name, _ = role_containers["worker"]
    worker = testinfra.get_host(f"docker://{name}")
    imported = worker.run(
        "python3 -c 'import dask_deploy.worker_preload as p, sys; "
        'print(p.handover_seconds(), "jsonschema" in sys.modules)\''
    )
    assert imported.rc == 0, imported.stderr
    assert imported.stdout.split() == ["20.0", "False"]
    assert worker.run("python3 -c 'import jsonschema'").rc != 0  # dask-deploy's deps are not there


#: Run inside the scaler image: its Kubernetes backend, on the client the image carries (without
#: the generated API classes and models, see build-venv.sh), creates, lists and deletes a pod.
KUBERNETES_FROM_THE_SCALER = """
import asyncio
from dask_deploy.backends import BackendContext, load_backend_factory
async def main():
    options = {"worker_template": "/work/worker-pod.yaml", "kubeconfig": "/work/kubeconfig"}
    context = BackendContext("img-k8s", "tcp://127.0.0.1:8786", options)
    backend = load_backend_factory("kubernetes")(context)
    await backend.scale_up(1)
    names = [instance.name for instance in await backend.instances()]
    await backend.scale_down(names)
    await backend.close()
    print(" ".join(names))
asyncio.run(main())
"""
SLEEPER_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"labels": {"app.kubernetes.io/name": "dask"}},
    "spec": {
        "restartPolicy": "Never",
        "containers": [
            {"name": "worker", "image": "dask", "command": ["sleep", "60"]},
        ],
    },
}


def test_the_scalers_kubernetes_client_creates_lists_and_deletes_pods(
    docker_images: dict[str, str], tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)  # readable by the image's uid 10001
    (shared / "worker-pod.yaml").write_text(yaml.safe_dump(SLEEPER_POD))
    with KubernetesStandIn(tmp_path / "api") as api:
        api.write_kubeconfig(shared / "kubeconfig")
        for path in shared.iterdir():
            path.chmod(0o644)
        ran = subprocess.run(
            [
                "docker",
                "run",
                "--rm",
                "--network=host",
                f"--label={LABEL_TEST}=1",
                f"--volume={shared}:/work:ro",
                "--entrypoint=python3",
                docker_images["scaler"],
                "-c",
                KUBERNETES_FROM_THE_SCALER,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ran.returncode == 0, ran.stderr[-3000:]
        created = ran.stdout.split()
        assert len(created) == 1
        assert api.created == created
        assert api.deleted == created


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


def test_worker_image_is_at_most_400_mb(docker_images: dict[str, str]) -> None:
    size = inspect(docker_images["worker"])["Size"]
    assert isinstance(size, int)
    assert size <= WORKER_IMAGE_LIMIT, f"worker image is {size / 1e6:.0f} MB"


def test_scaler_image_is_at_most_180_mb(docker_images: dict[str, str]) -> None:
    size = inspect(docker_images["scaler"])["Size"]
    assert isinstance(size, int)
    assert size <= SCALER_IMAGE_LIMIT, f"scaler image is {size / 1e6:.0f} MB"


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


def test_the_dashboard_serves_its_status_page(
    role_containers: dict[str, tuple[str, int]],
) -> None:
    name, port = role_containers["dashboard"]
    wait_listening(port, name)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=30) as response:
        assert response.status == 200
        page = response.read().decode()
    # The page is bokeh's: it loads bokeh's JavaScript from the scheduler, which must answer too.
    script = re.search(r'<script[^>]* src="([^"]*bokeh[^"]*\.js[^"]*)"', page)
    assert script, f"no bokeh script on /status:\n{page[:2000]}"
    src = script.group(1)
    url = src if src.startswith("http") else f"http://127.0.0.1:{port}/{src.lstrip('/')}"
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200


ARRAY_AND_DATAFRAME = """
import dask, dask.array as da, dask.dataframe as dd, pandas as pd
from distributed import Client
with Client("tcp://127.0.0.1:{port}", timeout="60s") as client:
    assert len(client.scheduler_info()["workers"]) == 1
    total = da.arange(1_000_000, chunks=100_000).sum().compute()
    frame = dd.from_pandas(pd.DataFrame({{"key": [i % 3 for i in range(300)], "x": range(300)}}),
                           npartitions=4)
    sums = frame.groupby("key").x.sum().compute().sort_index().tolist()
    series = dask.datasets.timeseries(start="2000-01-01", end="2000-01-11", freq="1min", seed=1)
    names = series.groupby("name").x.mean().compute()
    print(total, sums, len(names))
"""


def test_a_worker_runs_dask_array_and_dask_dataframe_work(
    docker_images: dict[str, str], role_containers: dict[str, tuple[str, int]]
) -> None:
    _, port = role_containers["scheduler"]
    client = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network=host",
            f"--label={LABEL_TEST}=1",
            "--entrypoint=python3",
            docker_images["worker"],
            "-c",
            ARRAY_AND_DATAFRAME.format(port=port),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert client.returncode == 0, client.stderr[-3000:]
    assert client.stdout.split("\n")[-2] == "499999500000 [14850, 14950, 15050] 26"
