"""Values and logs for the tests that run rendered apps on the Marathon stand-in.

The stand-in (dask_deploy.testing.marathon) runs each task as a local process in a sandbox
folder, as a Mesos agent would; its stderr is where a task that did not come up says why.
"""

from __future__ import annotations

import copy
import os
import random
import socket
import sys
from typing import Any

import requests

from dask_deploy.testing.marathon import DEFAULT_PORT_RANGE, MarathonStandIn


def agent_port_range() -> tuple[int, int]:
    """The ports this process's stand-ins offer: the xdist worker gwN's share of the agent
    default (31000-32000), all of it outside xdist.

    Each stand-in is a Mesos agent on this one host, and two agents offering the same range
    hand out the same port, as on Mesos. Between a task's launch and its bind (seconds, for a
    Dask process on a loaded machine) another test's stand-in found the port free and gave it
    to its own task: one of the two failed to bind (TASK_FAILED, then replaced), which the
    tests count as a failure."""
    low, high = DEFAULT_PORT_RANGE
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return low, high
    count = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    share = (high - low + 1) // count
    # A worker xdist starts in place of a crashed one is numbered from the count up: it takes
    # the share of gw(N mod count), inside the agent default, with that worker (a run whose
    # worker crashed has failed already).
    start = low + share * (int(worker.removeprefix("gw")) % count)
    return start, start + share - 1


AGENT_PORTS = agent_port_range()


def marathon_standin(**options: Any) -> MarathonStandIn:
    """A stand-in (not started) offering this process's ports; ``options`` as for
    :class:`MarathonStandIn`. Every stand-in a test starts comes from here."""
    return MarathonStandIn(port_range=AGENT_PORTS, **options)


#: Ports free_offered_port handed out in this process. A test asks for several (the
#: scheduler's, its dashboard's, the scaler's metrics) before anything listens on them, so a
#: port that is merely free could be handed out twice: the scheduler's dashboard then took the
#: scheduler's own port and every restart of its task failed with "Address already in use".
HANDED_OUT: set[int] = set()


def free_offered_port(standin: MarathonStandIn) -> int:
    """A port the stand-in's agent offers (its port range) that nothing listens on and that
    this process has not handed out before."""
    low, high = standin.port_range
    for port in random.sample(range(low, high + 1), high - low + 1):
        if port in HANDED_OUT:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue
            HANDED_OUT.add(port)
            return port
    raise AssertionError(f"no free port in {low}-{high}")


#: The scheduler's health check, quick: checked every second from 1 s after launch; failures
#: count from 15 s on (or from its first pass), and 3 in a row kill it.
QUICK_HEALTH_CHECK = {
    "delay": 1,
    "grace_period": 15,
    "interval": 1,
    "timeout": 2,
    "max_failures": 3,
}


def marathon_values(
    deployment: str, standin: MarathonStandIn, port: int, dashboard_port: int, **sections: Any
) -> dict[str, Any]:
    """Values for a test deployment on ``standin``: every command runs this Python; workers and
    the scaler reach the scheduler at the agent's address (``standin.agent_host``, the $HOST it
    binds); single-threaded workers without nanny; a quick health check. ``sections`` replace
    whole top-level sections (``scaler``, ``tls``, ``image``)."""
    return copy.deepcopy(
        {
            "deployment": deployment,
            "python": sys.executable,
            "marathon": {"url": standin.url},
            "scheduler": {
                "host": standin.agent_host,
                "port": port,
                "dashboard_port": dashboard_port,
                "health_check": QUICK_HEALTH_CHECK,
            },
            "worker": {
                "threads": 1,
                "mem": 1024,
                "nanny": False,
                "death_timeout": 20,
                "kill_grace_period": 30,
            },
            **sections,
        }
    )


def post_app(standin: MarathonStandIn, app_json: bytes) -> None:
    """``POST /v2/apps`` with a rendered app file, as ``curl --data @app.json`` sends it."""
    answer = requests.post(
        f"{standin.url}/v2/apps",
        data=app_json,
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert answer.status_code == 201, answer.text


def sandbox_logs(standin: MarathonStandIn, prefix: str = "") -> str:
    """The tail of the stderr of every task whose sandbox starts with ``prefix``."""
    parts = []
    for stderr in sorted(standin.workdir.glob(f"{prefix}*/stderr")):
        tail = stderr.read_text(errors="replace").splitlines()[-15:]
        parts.append(f"--- {stderr.parent.name}\n" + "\n".join(tail))
    return "\n".join(parts) or "(no task logs)"


def worker_task_ids(standin: MarathonStandIn, app_id: str) -> set[str]:
    """Ids of the app's tasks in TASK_RUNNING, as ``GET /v2/apps/{id}/tasks`` reports them."""
    body = requests.get(f"{standin.url}/v2/apps{app_id}/tasks", timeout=5).json()
    return {t["id"] for t in body["tasks"] if t["state"] == "TASK_RUNNING"}
