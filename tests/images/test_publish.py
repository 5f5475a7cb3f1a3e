"""`make publish` against a real registry: Debian's docker-registry (the Distribution registry),
started by scripts/registry-up.sh on 127.0.0.1 and a free port.

The test publishes, checks what the registry holds with skopeo (tags, digests, OCI labels),
deletes every local tag of the worker and scheduler images (the scheduler's is the worker's plus
layers) so that nothing of them is left on the engine, pulls both back by digest, and has a
worker started from the pulled image compute a task for a scheduler from the pulled one. At the
end the pulled images get their local build tags back (they are the same images).
"""

from __future__ import annotations

import json
import operator
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client

from docker_support import (
    REPO,
    container_logs,
    package_version,
    remove_test_containers,
    run_container,
)
from process_support import free_port

pytestmark = [
    pytest.mark.docker,
    pytest.mark.filterwarnings(
        "ignore:Mismatched versions found:distributed.versions.VersionMismatchWarning"
    ),
]
ROLES = ("scheduler", "worker", "scaler")
PULLED = ("scheduler", "worker")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a registry on 127.0.0.1, stopped at the end."""
    port = free_port()
    env = {**os.environ, "DASK_DEPLOY_REGISTRY_DIR": str(tmp_path_factory.mktemp("registry"))}
    up = subprocess.run(
        [str(REPO / "scripts" / "registry-up.sh"), str(port)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if up.returncode != 0:
        pytest.fail(f"scripts/registry-up.sh exit {up.returncode}:\n{up.stderr}", pytrace=False)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(REPO / "scripts" / "registry-down.sh"), str(port)], env=env, timeout=60)


def skopeo(*args: str) -> dict[str, object]:
    subprocess.run([str(REPO / "scripts" / "ensure-apt.sh"), "skopeo"], check=True)
    shown = subprocess.run(
        ["skopeo", *args, "--tls-verify=false"], capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stderr
    return dict(json.loads(shown.stdout))


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=600)


def test_publish_pushes_pulls_back_by_digest_and_the_pulled_worker_computes(
    docker_images: dict[str, str], registry: str, tmp_path: Path
) -> None:
    version = package_version()
    minor = version.rsplit(".", 1)[0]
    repository = f"{registry}/dask-deploy"
    published = subprocess.run(
        ["make", "--no-print-directory", "publish", f"REGISTRY={repository}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert published.returncode == 0, published.stderr[-4000:]
    digests = dict(line.split() for line in published.stdout.splitlines() if " sha256:" in line)
    names = {role: f"{repository}/dask-deploy-{role}" for role in ROLES}
    assert sorted(digests) == sorted(f"{names[role]}:{version}" for role in ROLES)

    # What the registry holds, read without the engine: both tags, one digest, the labels.
    revision = docker(
        "image", "inspect", "--format", "{{json .Config.Labels}}", docker_images["worker"]
    )
    built_labels = json.loads(revision.stdout)
    for role in ROLES:
        digest = digests[f"{names[role]}:{version}"]
        tags = skopeo("list-tags", f"docker://{names[role]}")["Tags"]
        assert sorted(tags) == sorted([version, minor])
        for tag in (version, minor):
            shown = skopeo("inspect", f"docker://{names[role]}:{tag}")
            assert shown["Digest"] == digest
            labels = shown["Labels"]
            assert isinstance(labels, dict)
            assert labels["org.opencontainers.image.version"] == version
            assert labels["org.opencontainers.image.source"].startswith("https://")
            assert (
                labels["org.opencontainers.image.revision"]
                == (built_labels["org.opencontainers.image.revision"])
            )
            assert labels["org.opencontainers.image.title"] == f"dask-deploy-{role}"

    # The scheduler image is the worker's plus layers, so both go: then nothing of the worker
    # image is left on the engine. Both are pulled back by digest.
    pulled_refs = {role: f"{names[role]}@{digests[f'{names[role]}:{version}']}" for role in PULLED}
    image_ids = [
        docker("image", "inspect", "--format", "{{.Id}}", docker_images[role]).stdout.strip()
        for role in PULLED
    ]
    remove_test_containers()
    local_tags = [docker_images[role] for role in PULLED]
    remote_tags = [f"{names[role]}:{each}" for role in PULLED for each in (version, minor)]
    removed = docker("rmi", *local_tags, *remote_tags)
    assert removed.returncode == 0, removed.stderr
    assert [docker("image", "inspect", each).returncode for each in image_ids] == [1, 1]
    try:
        for role, reference in pulled_refs.items():
            pulled = docker("pull", reference)
            assert pulled.returncode == 0, pulled.stderr
            inspected = json.loads(docker("image", "inspect", reference).stdout)[0]
            assert reference in inspected["RepoDigests"]
            assert inspected["Id"] == image_ids[PULLED.index(role)]
        worker = pulled_refs["worker"]
        inspected = json.loads(docker("image", "inspect", worker).stdout)[0]
        assert inspected["Config"]["Labels"] == built_labels

        port = free_port()
        suffix = time.time_ns() % 10**9
        scheduler, worker_name = f"pub-scheduler-{suffix}", f"pub-worker-{suffix}"
        run_container(
            pulled_refs["scheduler"],
            "--host=127.0.0.1",
            f"--port={port}",
            "--dashboard-address=127.0.0.1:0",
            name=scheduler,
        )
        run_container(
            worker,
            f"tcp://127.0.0.1:{port}",
            f"--name={worker_name}",
            "--host=127.0.0.1",
            "--no-dashboard",
            name=worker_name,
        )
        try:
            with Client(f"tcp://127.0.0.1:{port}", timeout="60s") as client:
                client.wait_for_workers(1, timeout=120)
                on = client.scheduler_info()["workers"]
                assert [info["name"] for info in on.values()] == [worker_name]
                assert client.submit(operator.add, 20, 22).result(timeout=120) == 42
        except Exception:
            print(container_logs(scheduler), container_logs(worker_name))
            raise
    finally:
        remove_test_containers()
        # A pulled image is the built one (same id); give it its local tag back.
        for role, reference in pulled_refs.items():
            if docker("image", "inspect", reference).returncode == 0:
                docker("tag", reference, docker_images[role])
        # Then drop every name of this registry: each one would keep a build alive on the
        # engine after the next build replaced it (about 1 GB per run).
        names_left = registry_references(registry)
        if names_left:
            docker("rmi", *names_left)
    assert registry_references(registry) == []


def registry_references(registry: str) -> list[str]:
    """The engine's names of images in ``registry``: tags, and digests where no tag is left."""
    listed = docker("image", "ls", "--digests", "--format", "{{.Repository}} {{.Tag}} {{.Digest}}")
    names = []
    for line in listed.stdout.splitlines():
        repository, tag, digest = line.split()
        if repository.startswith(f"{registry}/"):
            names.append(f"{repository}:{tag}" if tag != "<none>" else f"{repository}@{digest}")
    return names
