"""`dask-deploy up docker` where Docker Engine has no Compose: one clear line, nothing left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def up_docker(tmp_path: Path, docker_script: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``dask-deploy up docker`` with ``docker_script`` as the only program on PATH."""
    tools, state = tmp_path / "bin", tmp_path / "state"
    tools.mkdir()
    (tools / "docker").write_text(f"#!/bin/sh\n{docker_script}")
    (tools / "docker").chmod(0o755)
    env = {**os.environ, "PATH": str(tools), "DASK_DEPLOY_STATE_DIR": str(state)}
    done = subprocess.run(
        [sys.executable, "-m", "dask_deploy.cli", "up", "docker", "--name", "nocompose"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    return done, state / "nocompose"


def test_up_without_any_compose_says_what_to_install_and_writes_nothing(tmp_path: Path) -> None:
    # Debian's docker.io: the engine answers, `docker compose` is an unknown command.
    done, folder = up_docker(
        tmp_path,
        '[ "$1" = ps ] && exit 0\necho "docker: unknown command: docker $1" >&2\nexit 1\n',
    )
    assert done.returncode == 1, done
    assert done.stderr.splitlines() == [
        "dask-deploy up: error: the docker backend runs Docker Compose, and neither "
        "`docker compose` (the Compose plugin) nor `docker-compose` is installed here; "
        "install one (on Debian: apt-get install docker-compose)"
    ]
    assert not folder.exists()


def test_up_keeps_the_launch_error_when_stopping_fails_too(tmp_path: Path) -> None:
    """Nothing answers (no ``docker ps`` either): the Compose error first, the cleanup's after."""
    done, folder = up_docker(tmp_path, "echo 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    assert done.returncode == 1, done
    first, *rest = done.stderr.splitlines()
    assert first.startswith("dask-deploy up: error: the docker backend runs Docker Compose")
    assert len(rest) == 1 and "then stopping what was started failed too" in rest[0]
    assert "Cannot connect to the Docker daemon" in rest[0]
    assert not folder.exists()
