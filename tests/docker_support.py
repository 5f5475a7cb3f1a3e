"""A Docker engine and the project's images for the tests marked ``docker``.

``docker_engine`` (session) runs scripts/docker-up.sh, which installs docker.io when missing and
starts ``dockerd --bridge=none`` when no engine answers; the end of the run stops the engine
only when the run started it (tests/service_support.py). ``docker_images`` (session) provides
the base stand-in and builds the three images unless each tag exists and is newer than every
input (Dockerfile, requirements, constraints.txt, pyproject.toml, runtime/). When the engine or
a build fails, the test fails with the script's output (the tail of dockerd's or the build's
log).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from render_support import render_with_settings
from service_support import run_script, stop_at_end

REPO = Path(__file__).resolve().parents[1]
ROLES = ("scheduler", "worker", "scaler")
REPOSITORY = os.environ.get("DASK_DEPLOY_IMAGE_REPOSITORY", "ghcr.io/dask-deploy/dask-deploy")
LABEL_TEST = "dask-deploy.test"
REVISION = "org.opencontainers.image.revision"


def package_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as file:
        return str(tomllib.load(file)["project"]["version"])


def pinned(name: str) -> str:
    """The version constraints.txt pins for ``name``."""
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(f"{name.lower()}=="):
            return line.split("==", 1)[1].strip()
    raise LookupError(f"{name} is not pinned in constraints.txt")


def image_tag(role: str) -> str:
    return f"{REPOSITORY}-{role}:{package_version()}"


def _script(name: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": str(REPO / ".venv" / "bin" / "python")}
    return run_script(name, timeout=timeout, env=env)


def _inputs_mtime() -> float:
    context = REPO / "images" / "dask-deploy"
    inputs = [
        context / "Dockerfile",
        context / "build-venv.sh",
        context / ".dockerignore",
        *(context / "requirements").glob("*.txt"),
        REPO / "constraints.txt",
        REPO / "pyproject.toml",
        # The package's data files (templates, the scaler's schema) are in the wheel too; the
        # bytecode Python writes beside the sources is not.
        *(
            path
            for path in (REPO / "runtime" / "dask_deploy").rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        ),
    ]
    return max(path.stat().st_mtime for path in inputs)


def _image_created(tag: str) -> float | None:
    inspected = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Created}}", tag],
        capture_output=True,
        text=True,
    )
    if inspected.returncode != 0:
        return None
    stamp = inspected.stdout.strip()  # 2026-11-28T12:44:50.123456789Z: cut to microseconds
    head, _, fraction = stamp.rstrip("Z").partition(".")
    parsed = datetime.datetime.fromisoformat(f"{head}.{(fraction or '0')[:6]}+00:00")
    return parsed.timestamp()


def _revision() -> str:
    """What scripts/build-images.sh writes into the images' revision label: the full commit,
    with ``-dirty`` when tracked files have uncommitted changes."""
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown"
    changed = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    )
    return head.stdout.strip() + ("-dirty" if changed.stdout.strip() else "")


def _image_revision(tag: str) -> str:
    label = f'{{{{index .Config.Labels "{REVISION}"}}}}'
    inspected = subprocess.run(
        ["docker", "image", "inspect", "--format", label, tag], capture_output=True, text=True
    )
    return inspected.stdout.strip()


def images_fresh() -> bool:
    """Built from this checkout's commit, and after its inputs last changed.

    The engine and the tags are shared by every checkout on the machine: an image another
    checkout built a minute ago is newer than our files but not ours (its revision differs).
    """
    newest_input = _inputs_mtime()
    revision = _revision()
    for role in ROLES:
        created = _image_created(image_tag(role))
        if created is None or created <= newest_input:
            return False
        if _image_revision(image_tag(role)) != revision:
            return False
    return True


def remove_test_containers() -> None:
    listed = subprocess.run(
        ["docker", "ps", "--all", "--quiet", "--filter", f"label={LABEL_TEST}"],
        capture_output=True,
        text=True,
    )
    ids = listed.stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "--force", "--volumes", *ids], capture_output=True)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[None]:
    """A Docker engine that answers; stopped when the run ends, only if this run started it."""
    started = _script("docker-up.sh", timeout=600)
    if started.returncode != 0:
        pytest.fail(
            f"no Docker engine (scripts/docker-up.sh exit {started.returncode}):\n"
            f"{started.stdout}{started.stderr}",
            pytrace=False,
        )
    if "starting dockerd" in started.stderr:
        stop_at_end("docker-down.sh")  # when the whole run ends (the pool may still use it)
    try:
        yield
    finally:
        remove_test_containers()


@pytest.fixture(scope="session")
def docker_images(docker_engine: None) -> dict[str, str]:
    """Tag of each role's image, built (offline) unless already newer than its inputs."""
    base = _script("base-images.sh", timeout=600)
    if base.returncode != 0:
        pytest.fail(f"base image stand-in failed:\n{base.stderr}", pytrace=False)
    if not images_fresh():
        built = _script("build-images.sh", timeout=900)
        if built.returncode != 0:
            pytest.fail(
                f"scripts/build-images.sh exit {built.returncode}:\n{built.stderr[-4000:]}",
                pytrace=False,
            )
    return {role: image_tag(role) for role in ROLES}


def run_container(image: str, *args: str, name: str, **options: str) -> str:
    """Start a detached, labelled container on the host network; return its id."""
    extra = [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]
    started = subprocess.run(
        [
            "docker",
            "run",
            "--detach",
            "--network=host",
            f"--label={LABEL_TEST}=1",
            f"--name={name}",
            *extra,
            image,
            *args,
        ],
        capture_output=True,
        text=True,
    )
    if started.returncode != 0:
        pytest.fail(f"docker run {image} failed: {started.stderr}", pytrace=False)
    return started.stdout.strip()


def container_logs(name: str, lines: int = 40) -> str:
    logs = subprocess.run(
        ["docker", "logs", "--tail", str(lines), name], capture_output=True, text=True
    )
    return logs.stdout + logs.stderr


def docker_compose() -> str:
    """Debian's docker-compose (1.29), installed by scripts/ensure-apt.sh when missing."""
    if shutil.which("docker-compose") is None:
        subprocess.run([str(REPO / "scripts" / "ensure-apt.sh"), "docker-compose"], check=True)
    path = shutil.which("docker-compose")
    assert path, "docker-compose is not installed and scripts/ensure-apt.sh did not install it"
    return path


def containers(deployment: str, role: str | None = None) -> dict[str, str]:
    """name -> status of the deployment's containers (all roles unless ``role``)."""
    filters = ["--filter", f"label=dask-deploy.deployment={deployment}"]
    if role:
        filters += ["--filter", f"label=dask-deploy.role={role}"]
    listed = subprocess.run(
        ["docker", "ps", "--all", *filters, "--format", "{{json .}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    return {row["Names"]: row["State"] for row in rows}


def deployment_logs(deployment: str) -> str:
    """The tail of every container's log in the deployment, to explain a failure."""
    tails = [f"----- {name}\n{container_logs(name, 30)}" for name in containers(deployment)]
    return "\n".join(tails) or "no containers"


def services_running(deployment: str) -> bool:
    """Are the deployment's scheduler and scaler containers running?"""
    states = containers(deployment)
    return all(states.get(f"{deployment}-{role}") == "running" for role in ("scheduler", "scaler"))


@contextmanager
def compose_deployment(settings: Mapping[str, object], out: Path) -> Iterator[list[str]]:
    """Render the docker templates with ``settings`` into ``out`` and ``docker-compose up -d``.

    Yields the compose command (``[docker-compose, --project-name, ..., --file, ...]``). After
    the test, ``down`` and remove whatever container of the deployment is left, with its
    volumes.
    """
    rendered = render_with_settings("docker", settings, out)
    assert rendered.returncode == 0, rendered.stderr
    name = str(settings["deployment"])
    compose = [docker_compose(), "--project-name", name, "--file", str(out / "compose.yaml")]
    try:
        up = subprocess.run([*compose, "up", "--detach"], capture_output=True, text=True)
        assert up.returncode == 0, up.stderr
        yield compose
    finally:
        subprocess.run([*compose, "down", "--timeout", "30"], capture_output=True)
        leftovers = list(containers(name))
        if leftovers:
            subprocess.run(["docker", "rm", "--force", "--volumes", *leftovers], check=False)
