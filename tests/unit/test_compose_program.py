"""Which Docker Compose the docker launcher runs, and the error when there is none."""

from __future__ import annotations

from pathlib import Path

import pytest

from dask_deploy._launchers import CommandError, compose_program


def tool(folder: Path, name: str, exit_code: int) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\nexit {exit_code}\n")
    path.chmod(0o755)


def test_without_any_compose_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool(tmp_path, "docker", 1)  # Debian's docker.io: `docker compose` is an unknown command
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CommandError) as raised:
        compose_program()
    message = str(raised.value)
    assert "neither `docker compose`" in message
    assert "apt-get install docker-compose" in message
    assert raised.value.exit_code == 1


def test_the_compose_plugin_is_used_when_docker_compose_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool(tmp_path, "docker", 0)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert compose_program() == ["docker", "compose"]


def test_debian_docker_compose_is_preferred(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool(tmp_path, "docker", 0)
    tool(tmp_path, "docker-compose", 0)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert compose_program() == ["docker-compose"]
