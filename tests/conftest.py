"""Fixtures shared by several test folders, the xdist groups and the Hypothesis profiles.

``make test`` runs the suite on several xdist workers with ``--dist loadgroup``. Tests that
share one thing of the machine (a Docker engine, a Grid Engine) are put in one xdist group here,
by marker, so they run one after another on one worker while the rest of the suite runs beside
them. SLURM is not shared: each worker starts its own.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import dask
import pytest
from hypothesis import settings

import service_support
from docker_support import docker_engine, docker_images  # noqa: F401  (session fixtures)
from htcondor_support import htcondor  # noqa: F401  (session fixture)
from process_support import PORTS_HANDED_OUT, ports_folder, processes  # noqa: F401  (fixture)
from sge_support import sge  # noqa: F401  (session fixture)
from slurm_support import other_user, slurm, torque_commands  # noqa: F401  (session fixtures)
from ssh_support import sshd  # noqa: F401  (session fixture)
from tally import TALLY, FaultRecord

TESTS = Path(__file__).resolve().parent

#: Dask's own recommendation for tests that start clusters (distributed.utils_test's
#: config_for_cluster_tests): its event-loop health check every 500 ms instead of every 20 ms,
#: no statistical profiler, no GIL monitor. All three are diagnostics no test here asserts on,
#: and together they were about two thirds of an idle worker's CPU; the suite runs hundreds of
#: schedulers and workers on two cores. Set in the environment, so every scheduler, worker and
#: scaler the tests start as a process (and the SLURM jobs, which inherit it) runs the same.
DASK_TEST_ENVIRONMENT = {
    "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "500ms",
    "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
    "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__GIL__ENABLED": "False",
}
#: One BLAS and OpenMP thread per process: the values Dask's nanny sets for every worker process
#: it starts (distributed.nanny.pre-spawn-environ), here for every process. distributed imports
#: numpy when it is installed, and OpenBLAS starts a thread per core at import: about 0.06 s of
#: the 0.13 s CPU that numpy's import costs, in each of the ~700 Dask processes of a run. No
#: test does linear algebra.
DASK_TEST_ENVIRONMENT |= {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}
for _name, _value in DASK_TEST_ENVIRONMENT.items():
    os.environ.setdefault(_name, _value)
dask.config.refresh()  # the schedulers and workers the tests start in this process, too

#: The ports handed out in this run (process_support.free_port): made here, by the process that
#: loads this file first (the xdist controller, before it starts the workers, which inherit it).
OWN_PORTS_FOLDER = PORTS_HANDED_OUT not in os.environ
os.environ[PORTS_HANDED_OUT] = str(ports_folder())

#: marker -> xdist group. A test gets the group of the FIRST marker listed here that it carries,
#: so a fault test on SLURM runs with the other SLURM tests. A new tier that uses an engine of
#: its own (a Grid Engine, a registry, ...) adds its marker here and gets its own group.
XDIST_GROUPS: dict[str, str] = {
    # No group for "slurm" and "pbs" (slurm-wlm-torque's qsub/qstat/qdel on a SLURM): every
    # worker starts a SLURM of its own (tests/slurm_support.py), which its one test at a time
    # owns, so those tests spread over the workers.
    # The project's images on one Docker engine: built once, then the tests that run them, one
    # after another (test_publish removes and pulls back the images the others run).
    "docker": "docker",
    # checkov's own venv, built on first use (minutes on a fresh clone): one worker builds it
    # and runs the checks while the others go on, instead of all of them waiting for the build.
    "checkov": "checkov",
    # One Grid Engine (scripts/sge-up.sh).
    "sge": "sge",
    # The HTCondor pool: a container of that same engine (scripts/htcondor-up.sh) built from its
    # own trixie image, touching neither the project's images nor their test containers, so its
    # build and its tests run beside the docker group. The engine is stopped when the whole run
    # ends (tests/service_support.py), never when one group's worker ends.
    "htcondor": "htcondor",
    # One set of sshd on 127.0.0.2-4 (scripts/sshd-up.sh); one test stops and restarts a server.
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
#: but forgot the marker (it would otherwise run beside the group's tests on the same engine).
FIXTURE_GROUPS: dict[str, str] = {
    "docker_engine": "docker",
    "docker_images": "docker",
    "sge": "sge",
    "sshd": "ssh",
    "htcondor": "htcondor",
}


#: The order the xdist workers take the tests in. The integration tests mostly wait for their
#: services and the fuzz tier only computes, so fuzz tests are spread evenly among the
#: integration tests: whenever a worker waits, another has computing to do. (With the fuzz tier
#: after the integration tests, the cores sat ~20 % idle under the integration tests and the
#: fuzz tier ran alone at the end; before them, the same at the end.) The many short unit and
#: render tests come last and fill the end.
INTERLEAVED = ("integration", "fuzz")
LAST_TIERS = ("lint", "render", "unit")


def run_order(items: list[pytest.Item]) -> list[pytest.Item]:
    """``items`` (in collection order) in the order described at INTERLEAVED."""
    by_tier: dict[str, list[pytest.Item]] = {}
    for item in items:
        by_tier.setdefault(tier(item), []).append(item)
    first = [
        i
        for name, group in by_tier.items()
        if name not in (*INTERLEAVED, *LAST_TIERS)
        for i in group
    ]
    host, spread = (by_tier.get(name, []) for name in INTERLEAVED)
    # Item k of `spread` goes where it falls proportionally among the `host` items.
    slots = [(index + 0.5, item) for index, item in enumerate(host)]
    slots += [((k + 0.5) * len(host) / len(spread), item) for k, item in enumerate(spread)]
    middle = [item for _, item in sorted(slots, key=lambda slot: slot[0])]
    last = [i for name in LAST_TIERS for i in by_tier.get(name, [])]
    return first + middle + last


def tier(item: pytest.Item) -> str:
    """The folder under tests/ a test is in (unit, render, fuzz, integration, faults, ...)."""
    path = Path(str(item.path))
    parts = path.relative_to(TESTS).parts if path.is_relative_to(TESTS) else ()
    return parts[0] if len(parts) > 1 else ""


def xdist_group(item: pytest.Item) -> str | None:
    for mark, group in XDIST_GROUPS.items():
        if item.get_closest_marker(mark):
            return group
    fixtures = getattr(item, "fixturenames", ())
    return next((group for name, group in FIXTURE_GROUPS.items() if name in fixtures), None)


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> Generator[None, None, None]:
    """Mark each test with its group, then make sure a grouped test reaches the xdist
    controller as ``nodeid@group``.

    Before the other implementations (xdist's among them) run, every test that shares an
    engine gets its ``xdist_group`` marker. xdist's loadgroup then tells the controller the
    group by appending ``@group`` to the node id in the worker (it assigns ``item._nodeid``).
    pytest 9.2 keeps the id in a structured ``item.id`` and ignores that attribute
    (pytest-xdist issue #1386), so every group was silently dropped: SLURM, Docker and sshd
    tests ran on several workers at once and stopped or filled each other's services. After
    xdist's hook the id is replaced the way pytest-xdist PR #1388 does, and a run that still
    cannot group refuses to start instead of running those tests side by side.
    """
    for item in items:
        group = xdist_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    items[:] = run_order(items)
    yield
    if not getattr(config.option, "loadgroup", False):
        return  # not an xdist worker with --dist loadgroup: nothing is scheduled by group
    for item in items:
        group = xdist_group(item)
        if group is None or item.nodeid.endswith(f"@{group}"):
            continue
        structured = getattr(item, "id", None)
        if structured is not None and hasattr(type(structured), "parse"):
            item._id = type(structured).parse(f"{item.nodeid}@{group}")
        if not item.nodeid.endswith(f"@{group}"):
            raise pytest.UsageError(
                f"--dist loadgroup: {item.nodeid} did not get its group '{group}' "
                "(pytest-xdist could not name the scheduling scope); run with -n 0"
            )


# The fault tally: fault tests append to TALLY in whichever process runs them. Under xdist each
# worker hands its records to the controller, which prints the sum once.


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput: dict[str, Any] | None = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["fault_tally"] = {
            "faults": [asdict(fault) for fault in TALLY.faults],
            "instances_left_behind": TALLY.instances_left_behind,
        }
        # The controller stops them once every worker has ended (tests/service_support.py).
        workeroutput["started_services"] = dict(service_support.STARTED)
        return
    # The whole run ends here (one process, or the xdist controller after its last worker).
    if OWN_PORTS_FOLDER:
        shutil.rmtree(os.environ[PORTS_HANDED_OUT], ignore_errors=True)
    said = service_support.stop_started()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for line in said:
        if reporter is not None:
            reporter.write_line(f"services this run started, stopped: {line}")


@pytest.hookimpl(optionalhook=True)  # an xdist hook: defined only when xdist runs the session
def pytest_testnodedown(node: Any, error: object) -> None:
    service_support.merge(getattr(node, "workeroutput", {}).get("started_services", {}))
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
