"""A real HTCondor personal pool for the tests (integration/htcondor), from scripts/htcondor-up.sh.

The session fixture ``htcondor`` (registered in tests/conftest.py) builds the pool's image when
it is missing (debootstrap of Debian trixie, ``apt-get install htcondor``: about five minutes on
a fresh machine), starts the pool container with ``--network host`` and puts the test-only
``condor_*`` shims (scripts/htcondor/bin) first on PATH: they run the real tools inside the
pool container as its submitting user. The pool is stopped at the end unless it was already up.
Paths the pool must see lie in its shared folder, which has the same path inside and out.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("DASK_DEPLOY_HTCONDOR_DIR", "/tmp/dask-deploy-htcondor"))
SHIMS = REPO / "scripts" / "htcondor" / "bin"
CONTAINER = "dask-deploy-htcondor"
#: Where the pool's image installed distributed (a worker's python3 once this is on its PATH).
POOL_PYTHON_BIN = "/opt/dask/bin"


@dataclass(frozen=True)
class HTCondor:
    """The running test pool: its shared folder and how to read its daemons' logs."""

    share: Path

    def log_tails(self, lines: int = 30) -> str:
        shown = subprocess.run(
            ["docker", "exec", CONTAINER, "sh", "-c", f"tail -n {lines} /var/log/condor/*Log"],
            capture_output=True,
            text=True,
        )
        return shown.stdout + shown.stderr


@pytest.fixture(scope="session")
def htcondor() -> Iterator[HTCondor]:
    """Start the pool once per session; stop it afterwards unless it was already running."""
    started = subprocess.run(
        [str(REPO / "scripts" / "htcondor-up.sh")], capture_output=True, text=True, timeout=1200
    )
    if started.returncode != 0:
        pytest.fail(
            f"HTCondor did not start (scripts/htcondor-up.sh exit {started.returncode}):\n"
            f"{started.stdout}{started.stderr}",
            pytrace=False,
        )
    was_running = "already up" in started.stderr
    previous = os.environ["PATH"]
    os.environ["PATH"] = f"{SHIMS}{os.pathsep}{previous}"
    try:
        yield HTCondor(share=STATE / "share")
    finally:
        os.environ["PATH"] = previous
        if not was_running:
            subprocess.run([str(REPO / "scripts" / "htcondor-down.sh")], check=False)
