"""A real SLURM for the tests (integration/slurm, faults), started by scripts/slurm-up.sh.

The session fixture ``slurm`` (registered in tests/conftest.py) installs slurm-wlm and munge
when missing (so a fresh CI machine works), starts munged, slurmctld and several slurmd on
127.0.0.1, and the end of the run stops them (tests/service_support.py). When SLURM cannot
start, the test fails with the tail of SLURM's own logs.

Every xdist worker gets a SLURM of its own (its folder and ports, see ``instance``): a worker
runs one test at a time, so a SLURM test owns its SLURM while it runs (a full cluster, a stopped
slurmctld) and the SLURM tests need no xdist group; they spread over the workers like the rest.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service_support import run_script, stop_at_end

REPO = Path(__file__).resolve().parents[1]
#: slurm-up.sh's defaults: a run in one process (``-n 0``) uses them as they are.
DEFAULT_STATE = Path(os.environ.get("DASK_DEPLOY_SLURM_DIR", "/tmp/dask-deploy-slurm"))
DEFAULT_PORT = int(os.environ.get("DASK_DEPLOY_SLURM_PORT", "16817"))
#: Ports one SLURM takes from its controller's: the controller's and one per slurmd.
PORTS_PER_SLURM = 10


def instance() -> tuple[Path, int]:
    """This process's SLURM: its folder and slurmctld port. The xdist worker gwN gets
    ``<default folder>-gwN`` and the port PORTS_PER_SLURM * (N + 1) above the default."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return DEFAULT_STATE, DEFAULT_PORT
    index = int(worker.removeprefix("gw"))
    return Path(f"{DEFAULT_STATE}-{worker}"), DEFAULT_PORT + PORTS_PER_SLURM * (index + 1)


STATE, PORT = instance()


def slurm_up() -> list[str]:
    """The command that starts (or restarts the controller of) this process's SLURM; run it
    with ``slurm_up_env()``."""
    return [str(REPO / "scripts" / "slurm-up.sh")]


def slurm_up_env() -> dict[str, str]:
    return {
        **os.environ,
        "DASK_DEPLOY_SLURM_DIR": str(STATE),
        "DASK_DEPLOY_SLURM_PORT": str(PORT),
    }


#: A second Unix user for the tests of what one user may see of another's jobs.
OTHER_USER = "dask-deploy-other"


@dataclass(frozen=True)
class Slurm:
    """The running test SLURM: where its configuration and logs are."""

    conf: Path
    logs: Path

    def log_tails(self, lines: int = 40) -> str:
        """The end of every daemon's log, to explain a failure."""
        tails = []
        for log in sorted(self.logs.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"----- {log}\n" + "\n".join(text))
        return "\n".join(tails)


@pytest.fixture(scope="session")
def slurm() -> Iterator[Slurm]:
    """Start SLURM once per session; the run's end stops it unless it was already running."""
    started = subprocess.run(
        slurm_up(), env=slurm_up_env(), capture_output=True, text=True, timeout=600
    )
    if started.returncode != 0:
        pytest.fail(
            f"SLURM did not start (scripts/slurm-up.sh exit {started.returncode}):\n"
            f"{started.stdout}{started.stderr}",
            pytrace=False,
        )
    if "already up" not in started.stderr:
        stop_at_end("slurm-down.sh", str(STATE))  # when the whole run ends, not this session
    conf = STATE / "slurm.conf"
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        yield Slurm(conf=conf, logs=STATE / "log")
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


@pytest.fixture(scope="session")
def other_user() -> str:
    """A second Unix user, created when missing; it may submit to the test SLURM, which keeps
    no accounting (every user of the machine may run jobs, as on a site without limits)."""
    if subprocess.run(["id", OTHER_USER], capture_output=True).returncode != 0:
        created = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER],
            capture_output=True,
            text=True,
        )
        # Exit status 9: another session created it a moment ago.
        if created.returncode not in (0, 9):
            pytest.fail(f"could not create the user {OTHER_USER}: {created.stderr}", pytrace=False)
    return OTHER_USER


@pytest.fixture(scope="session")
def torque_commands(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with SLURM's Torque-compatible qsub, qstat and qdel (scripts/torque-commands.sh),
    the real PBS command line of the pbs tier; put it first on PATH."""
    folder = tmp_path_factory.mktemp("torque") / "bin"
    made = run_script("torque-commands.sh", str(folder), timeout=600)
    assert made.returncode == 0, made.stderr
    return folder
