"""A real HTCondor personal pool for the tests (integration/htcondor), from scripts/htcondor-up.sh.

The session fixture ``htcondor`` (registered in tests/conftest.py) builds the pool's image when
it is missing (debootstrap of Debian trixie, ``apt-get install htcondor``: about five minutes on
a fresh machine), starts the pool container with ``--network host`` and puts the test-only
``condor_*`` shims (scripts/htcondor/bin) first on PATH: they run the real tools inside the
pool container as its submitting user. The end of the run stops the pool (and an engine that
htcondor-up started) unless it was already up.
Paths the pool must see lie in its shared folder, which has the same path inside and out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service_support import run_script, stop_at_end

REPO = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("DASK_DEPLOY_HTCONDOR_DIR", "/tmp/dask-deploy-htcondor"))
SHIMS = REPO / "scripts" / "htcondor" / "bin"
CONTAINER = "dask-deploy-htcondor"
#: Where the pool's image installed distributed (a worker's python3 once this is on its PATH).
POOL_PYTHON_BIN = "/opt/dask/bin"
#: dask_deploy of this checkout, for the pool's workers (their PYTHONPATH): the worker jobs load
#: dask_deploy.worker_preload, as a site's worker environment would have it installed.
WORKER_SITE = STATE / "share" / "dask-deploy-site"
#: The uid the pool's jobs run as (scripts/htcondor-up.sh): the host user's, or 2742 for root,
#: whose jobs HTCondor refuses.
SUBMITTER_UID = os.getuid() or 2742


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
    """Start the pool once per session; the run's end stops it unless it was already running."""
    started = run_script("htcondor-up.sh", timeout=1200)
    if started.returncode != 0:
        pytest.fail(
            f"HTCondor did not start (scripts/htcondor-up.sh exit {started.returncode}):\n"
            f"{started.stdout}{started.stderr}",
            pytrace=False,
        )
    # Stopped when the whole run ends, pool before engine, and only what this run started.
    if "already up" not in started.stderr:
        stop_at_end("htcondor-down.sh")
    if "starting dockerd" in started.stderr:  # htcondor-up.sh runs docker-up.sh first
        stop_at_end("docker-down.sh")
    shutil.rmtree(WORKER_SITE, ignore_errors=True)
    shutil.copytree(
        REPO / "runtime" / "dask_deploy",
        WORKER_SITE / "dask_deploy",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    previous = os.environ["PATH"]
    os.environ["PATH"] = f"{SHIMS}{os.pathsep}{previous}"
    try:
        yield HTCondor(share=STATE / "share")
    finally:
        os.environ["PATH"] = previous
