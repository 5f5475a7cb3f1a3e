"""Fixtures shared by several test folders, the xdist groups and the Hypothesis profiles.

``make test`` runs the suite on several xdist workers with ``--dist loadgroup``. Tests that
share one thing of the machine (a SLURM, a Docker engine) are put in one xdist group here, by
marker, so they run one after another on one worker while the rest of the suite runs beside
them.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytest
from hypothesis import settings

from docker_support import docker_engine, docker_images  # noqa: F401  (session fixtures)
from htcondor_support import htcondor  # noqa: F401  (session fixture)
from process_support import processes  # noqa: F401  (function fixture)
from sge_support import sge  # noqa: F401  (session fixture)
from slurm_support import other_user, slurm  # noqa: F401  (session fixtures)
from ssh_support import sshd  # noqa: F401  (session fixture)
from tally import TALLY, FaultRecord

#: marker -> xdist group. A test gets the group of the FIRST marker listed here that it carries,
#: so a fault test on SLURM runs with the other SLURM tests. A new tier that uses an engine of
#: its own (a Grid Engine, a registry, ...) adds its marker here and gets its own group.
XDIST_GROUPS: dict[str, str] = {
    # One SLURM (scripts/slurm-up.sh), stopped at the end by the worker that started it.
    "slurm": "slurm",
    # PBS runs slurm-wlm-torque's qsub/qstat/qdel on that same SLURM.
    "pbs": "slurm",
    # One Docker engine and the project's images; the worker that started dockerd stops it.
    "docker": "docker",
    # checkov's own venv, built on first use (minutes on a fresh clone): one worker builds it
    # and runs the checks while the others go on, instead of all of them waiting for the build.
    "checkov": "checkov",
    # One Grid Engine (scripts/sge-up.sh).
    "sge": "sge",
    # The HTCondor pool runs in a container of that same engine (scripts/htcondor-up.sh), so it
    # shares the docker group: the worker that started dockerd stops it after its last test.
    "htcondor": "docker",
    # One set of sshd on 127.0.0.2-4 (scripts/sshd-up.sh), stopped by the worker that started it.
    "ssh": "ssh",
    # No group for "faults": a fault test owns its scheduler, ports and state folder, and its
    # recovery bound counts scaler ticks, not seconds, so a busy neighbour cannot break it.
}

#: ``make test``: the same cases on every run, derived from each test's name; no example
#: database, so a clean checkout and a developer's tree run exactly the same inputs.
settings.register_profile("ci", max_examples=100, derandomize=True, database=None, deadline=None)
#: ``make fuzz``: new random cases on every run and five times as many; a failure is saved in
#: .hypothesis/ and replayed first next time.
settings.register_profile("fuzz", max_examples=500, derandomize=False, deadline=None)
settings.load_profile("ci")


#: session fixture -> xdist group: the same groups for a test that uses the engine's fixture
#: but forgot the marker (the fixture's teardown would stop the engine under another worker).
FIXTURE_GROUPS: dict[str, str] = {
    "slurm": "slurm",
    "other_user": "slurm",
    "docker_engine": "docker",
    "docker_images": "docker",
    "sge": "sge",
    "sshd": "ssh",
    "htcondor": "docker",
}


def xdist_group(item: pytest.Item) -> str | None:
    for mark, group in XDIST_GROUPS.items():
        if item.get_closest_marker(mark):
            return group
    fixtures = getattr(item, "fixturenames", ())
    return next((group for name, group in FIXTURE_GROUPS.items() if name in fixtures), None)


@pytest.hookimpl(tryfirst=True)  # before xdist turns xdist_group markers into scheduling scopes
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = xdist_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


# The fault tally: fault tests append to TALLY in whichever process runs them. Under xdist each
# worker hands its records to the controller, which prints the sum once.


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput: dict[str, Any] | None = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["fault_tally"] = {
            "faults": [asdict(fault) for fault in TALLY.faults],
            "instances_left_behind": TALLY.instances_left_behind,
        }


@pytest.hookimpl(optionalhook=True)  # an xdist hook: defined only when xdist runs the session
def pytest_testnodedown(node: Any, error: object) -> None:
    tally = getattr(node, "workeroutput", {}).get("fault_tally")
    if tally:
        TALLY.faults.extend(FaultRecord(**fault) for fault in tally["faults"])
        TALLY.instances_left_behind += tally["instances_left_behind"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the fault tally: faults injected, keys lost, instances left, worst recovery."""
    if not TALLY.faults:
        return
    terminalreporter.section("fault tally")
    for line in TALLY.lines():
        terminalreporter.write_line(line)
