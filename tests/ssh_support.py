"""OpenSSH servers on 127.0.0.2-4 for the ssh backend's tests, started by scripts/sshd-up.sh."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from service_support import run_script, stop_at_end

SSH_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
SSH_PORT = int(os.environ.get("DASK_DEPLOY_SSH_PORT", "2022"))
SSH_DIR = Path(os.environ.get("DASK_DEPLOY_SSH_DIR", "/tmp/dask-deploy-sshd"))


@dataclass(frozen=True)
class SshServers:
    """Where the servers listen and the files a client needs to reach them."""

    hosts: tuple[str, ...]
    port: int
    identity_file: Path
    known_hosts: Path

    def options(self) -> dict[str, object]:
        """The ssh backend's connection options for these servers."""
        return {
            "port": self.port,
            "identity_file": str(self.identity_file),
            "known_hosts": str(self.known_hosts),
        }

    def stop(self, host: str) -> None:
        """Stop the listening sshd of ``host``; its running workers stay up."""
        _script("sshd-down.sh", host)

    def start(self, host: str) -> None:
        _script("sshd-up.sh", host)


def _script(name: str, *args: str) -> str:
    done = run_script(name, *args, timeout=900)
    if done.returncode != 0:
        pytest.fail(
            f"scripts/{name} {' '.join(args)} failed:\n{done.stdout}{done.stderr}", pytrace=False
        )
    return done.stderr


@pytest.fixture(scope="session")
def sshd() -> SshServers:
    """The three servers, started when missing; the run's end stops only those it started."""
    said = _script("sshd-up.sh", *SSH_HOSTS)
    started = [host for host in SSH_HOSTS if f"{host}:{SSH_PORT} up (pid" in said]
    if started:
        stop_at_end("sshd-down.sh", *started)  # when the whole run ends
    return SshServers(SSH_HOSTS, SSH_PORT, SSH_DIR / "id_ed25519", SSH_DIR / "known_hosts")
