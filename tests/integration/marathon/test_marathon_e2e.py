"""End to end against the Marathon stand-in: render, post the apps, burst, go idle, delete.

The stand-in runs every task as a local process with Marathon's environment, so the scheduler,
the scaler (`dask-deploy scale`, configured by DASK_DEPLOY_SCALER_CONFIG) and the workers
(`dask worker --name $MESOS_TASK_ID`) are real. The values point the commands at the project's
.venv python and every address at 127.0.0.1; timings are short through the values.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from distributed import Client

from dask_deploy.render import render
from dask_deploy.testing.marathon import MarathonStandIn, find_schemas
from dask_deploy.values import resolve_values

pytestmark = [pytest.mark.marathon, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[3]
WORKER_APP = "/e2e/worker"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    what: str, condition: Callable[[], Any], timeout: float, logs: Callable[[], str]
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting until {what}\n{logs()}")


def slow_square(x: int) -> int:
    time.sleep(0.5)
    return x * x


def alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def marathon(tmp_path: Path) -> Iterator[MarathonStandIn]:
    with MarathonStandIn(workdir=tmp_path / "sandboxes") as standin:
        yield standin


def sandbox_logs(standin: MarathonStandIn) -> str:
    """The tail of every task's stderr: why a scheduler, scaler or worker did not come up."""
    parts = []
    for stderr in sorted(standin.workdir.glob("*/stderr")):
        tail = stderr.read_text(errors="replace").splitlines()[-15:]
        parts.append(f"--- {stderr.parent.name}\n" + "\n".join(tail))
    return "\n".join(parts) or "(no task logs)"


def test_rejects_negative_instances_and_upper_case_ids(marathon: MarathonStandIn) -> None:
    if find_schemas() is None:
        pytest.skip("Marathon JSON Schemas (../shared/reference/marathon) absent: not validating")
    for app, path in (
        ({"id": "/e2e/bad", "cmd": "true", "instances": -1}, "/instances"),
        ({"id": "/E2E/Bad", "cmd": "true"}, "/id"),
    ):
        answer = requests.post(f"{marathon.url}/v2/apps", json=app, timeout=5)
        assert answer.status_code == 422
        body = answer.json()
        assert body["message"] == "Object is not valid"
        assert [d["path"] for d in body["details"]] == [path]
        assert body["details"][0]["errors"]
    assert requests.get(f"{marathon.url}/v2/apps", timeout=5).json() == {"apps": []}


def test_burst_scales_up_idle_retires_exactly_those_tasks_and_delete_leaves_nothing(
    marathon: MarathonStandIn, tmp_path: Path
) -> None:
    if not (REPO / "runtime" / "dask_deploy" / "_cli_scale.py").is_file():
        pytest.fail("dask-deploy scale (runtime/dask_deploy/_cli_scale.py) is missing")
    port, dashboard = free_port(), free_port()
    values = {
        "deployment": "e2e",
        "image": {"repository": None},
        "python": sys.executable,
        "marathon": {"url": marathon.url},
        # The scheduler and the workers import slow_square from this module.
        "scheduler": {
            "host": "127.0.0.1",
            "port": port,
            "dashboard_port": dashboard,
            "env": {"PYTHONPATH": str(Path(__file__).parent)},
        },
        "worker": {
            "threads": 1,
            "mem": 1024,
            "nanny": False,
            "death_timeout": 20,
            "kill_grace_period": 30,
            "env": {"PYTHONPATH": str(Path(__file__).parent)},
        },
        "scaler": {
            "minimum": 1,
            "maximum": 3,
            "interval": 0.5,
            "startup_timeout": 60,
            "scale_down_window": 2,
            "metrics_port": None,
        },
    }
    out = tmp_path / "rendered"
    render(resolve_values("marathon", overrides=[values], root=REPO / "templates"), out)
    logs = lambda: sandbox_logs(marathon)  # noqa: E731
    for name in ("scheduler", "worker", "scaler"):
        answer = requests.post(
            f"{marathon.url}/v2/apps",
            data=(out / f"{name}-app.json").read_bytes(),
            headers={"Content-Type": "application/json"},
            timeout=5,
        )
        assert answer.status_code == 201, answer.text

    def running_apps() -> set[str]:
        body = requests.get(f"{marathon.url}/v2/tasks", timeout=5).json()
        return {t["appId"] for t in body["tasks"] if t["state"] == "TASK_RUNNING"}

    def scheduler_listens() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_for("the scheduler listens", scheduler_listens, 60, logs)
    assert {"/e2e/scheduler", "/e2e/scaler"} <= running_apps()

    def worker_tasks() -> set[str]:
        body = requests.get(f"{marathon.url}/v2/apps{WORKER_APP}/tasks", timeout=5).json()
        return {t["id"] for t in body["tasks"] if t["state"] == "TASK_RUNNING"}

    with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:

        def worker_names() -> set[str]:
            return {w["name"] for w in client.scheduler_info()["workers"].values()}

        # The scaler keeps the minimum: one worker, named by its task id.
        wait_for("the minimum worker registers", worker_names, 90, logs)
        assert worker_names() <= set(marathon.launched)

        held = client.submit(slow_square, 7)
        burst = client.map(slow_square, range(40))
        wait_for("the worker app scales up", lambda: len(worker_tasks()) > 1, 90, logs)
        wait_for(
            "the new workers register under their task ids",
            lambda: len(worker_names()) > 1 and worker_names() <= set(marathon.launched),
            60,
            logs,
        )
        peak = worker_names()
        assert client.gather(burst) == [x * x for x in range(40)]
        del burst

        # Idle: back to the minimum; the retired workers' tasks, and only they, were killed.
        wait_for("idle workers are retired", lambda: len(worker_tasks()) == 1, 90, logs)
        wait_for("the scheduler agrees", lambda: worker_names() == worker_tasks(), 30, logs)
        survivors = worker_tasks()
        killed = {task for task in peak if task not in survivors}
        assert killed
        wait_for("the killed tasks end", lambda: killed <= marathon.ended.keys(), 30, logs)
        assert {marathon.ended[task] for task in killed} == {"TASK_KILLED"}
        assert held.result() == 49  # held results survive the scale-down
        worker_launches = [t for t in marathon.launched if t.startswith("e2e_worker.")]
        assert len(worker_launches) <= 3  # never above maximum: nothing replaced or duplicated
        apps = requests.get(f"{marathon.url}/v2/apps{WORKER_APP}", timeout=5).json()
        assert apps["app"]["instances"] == 1

    # Deleting the deployment leaves no process behind.
    answer = requests.delete(f"{marathon.url}/v2/groups/e2e", params={"force": "true"}, timeout=5)
    assert answer.status_code == 200, answer.text
    # A worker whose scheduler goes away while it closes can hang until SIGKILL, as on Marathon:
    # allow the grace period.
    wait_for("every task is gone", lambda: not marathon.pids(), 30 + 30, logs)
    assert not [pid for pid in marathon.launched.values() if alive(pid)]
    assert requests.get(f"{marathon.url}/v2/apps", timeout=5).json() == {"apps": []}
