"""End to end against the Marathon stand-in: render, post the apps, burst, go idle, delete.

The stand-in runs every task as a local process with Marathon's environment, so the scheduler,
the scaler (`dask-deploy scale`, configured by DASK_DEPLOY_SCALER_CONFIG) and the workers
(`dask worker --name $MESOS_TASK_ID`) are real. The values point the commands at the project's
.venv python; tasks bind the agent's address ($HOST, 127.0.0.2 here, not the loopback where
Mesos sends MESOS_HTTP checks), on ports from the agent's default offer (31000-32000). The
scheduler's health check runs as Mesos runs it: it must pass, or the scheduler is killed.
Timings are short through the values.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from distributed import Client

from dask_deploy.testing.marathon import MarathonStandIn
from marathon_support import (
    free_offered_port,
    marathon_standin,
    marathon_values,
    post_app,
    sandbox_logs,
    worker_task_ids,
)
from process_support import BURST_SCALER_VALUES, listening, wait_for
from render_support import render_over_defaults

pytestmark = [pytest.mark.marathon, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[3]
WORKER_APP = "/e2e/worker"


def scaler_decisions(marathon: MarathonStandIn) -> str:
    """The scaler task's log lines that decide or act."""
    lines = []
    for stderr in sorted(marathon.workdir.glob("e2e_scaler*/stderr")):
        text = stderr.read_text(errors="replace")
        lines += [line for line in text.splitlines() if "dask_deploy" in line]
    return "\n".join(lines[-60:]) or "(no scaler log)"


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
    with marathon_standin(workdir=tmp_path / "sandboxes") as standin:
        yield standin


def test_rejects_negative_instances_and_upper_case_ids(marathon: MarathonStandIn) -> None:
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
    port, host = free_offered_port(marathon), marathon.agent_host
    # The scheduler and the workers import slow_square from this module, and what it imports.
    tests = Path(__file__).parents[2]
    here = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(tests)])}
    values = marathon_values(
        "e2e",
        marathon,
        port,
        free_offered_port(marathon),
        image={"repository": None},
        scaler=BURST_SCALER_VALUES,
    )
    values["scheduler"]["env"] = values["worker"]["env"] = here
    out = tmp_path / "rendered"
    render_over_defaults("marathon", values, out)
    logs = lambda: sandbox_logs(marathon)  # noqa: E731
    for name in ("scheduler", "worker", "scaler"):
        post_app(marathon, (out / f"{name}-app.json").read_bytes())

    def running_apps() -> set[str]:
        body = requests.get(f"{marathon.url}/v2/tasks", timeout=5).json()
        return {t["appId"] for t in body["tasks"] if t["state"] == "TASK_RUNNING"}

    wait_for("the scheduler listens", lambda: listening(port, host), 60, logs)
    assert {"/e2e/scheduler", "/e2e/scaler"} <= running_apps()

    def scheduler_healthy() -> bool:
        app = requests.get(f"{marathon.url}/v2/apps/e2e/scheduler", timeout=5).json()["app"]
        return bool(app["tasksHealthy"] == 1)

    wait_for("the scheduler passes its health check", scheduler_healthy, 60, logs)

    def worker_tasks() -> set[str]:
        return worker_task_ids(marathon, WORKER_APP)

    with Client(f"tcp://{host}:{port}", timeout=60) as client:
        #: Every worker name the scheduler ever listed: under load the burst can end and a
        #: retirement start between two polls, so the peak is what was seen, not one snapshot.
        seen: set[str] = set()

        def worker_names() -> set[str]:
            names = {w["name"] for w in client.scheduler_info()["workers"].values()}
            seen.update(names)
            return names

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
        assert client.gather(burst) == [x * x for x in range(40)]
        del burst

        # Idle: back to the minimum; the retired workers' tasks, and only they, were killed.
        wait_for("idle workers are retired", lambda: len(worker_tasks()) == 1, 90, logs)
        wait_for("the scheduler agrees", lambda: worker_names() == worker_tasks(), 30, logs)
        survivors = worker_tasks()
        killed = seen - survivors
        assert killed
        wait_for("the killed tasks end", lambda: killed <= marathon.ended.keys(), 30, logs)
        assert {marathon.ended[task] for task in killed} == {"TASK_KILLED"}
        assert held.result() == 49  # held results survive the scale-down
        # Never above maximum, nothing replaced: every worker task that ended was killed by
        # the scaler (a task that failed would have been relaunched by Marathon). A booting
        # task the policy cancelled and asked for again later is a launch, not a replacement.
        worker_ended = {t: s for t, s in marathon.ended.items() if t.startswith("e2e_worker.")}
        not_killed = [t for t, state in worker_ended.items() if state != "TASK_KILLED"]
        evidence = (
            f"worker tasks launched {len([t for t in marathon.launched if 'e2e_worker.' in t])}; "
            f"ended {worker_ended}; killed unhealthy {marathon.unhealthy_kills}\n"
            f"{scaler_decisions(marathon)}\n"
            + "\n".join(sandbox_logs(marathon, task) for task in not_killed)
        )
        assert marathon.peak_active[WORKER_APP] <= 3, evidence
        assert set(worker_ended.values()) == {"TASK_KILLED"}, evidence
        apps = requests.get(f"{marathon.url}/v2/apps{WORKER_APP}", timeout=5).json()
        assert apps["app"]["instances"] == 1
        # The scheduler was checked all along, and never killed for it.
        assert scheduler_healthy() and not marathon.unhealthy_kills
        assert len([t for t in marathon.launched if t.startswith("e2e_scheduler.")]) == 1

    # Deleting the deployment leaves no process behind.
    answer = requests.delete(f"{marathon.url}/v2/groups/e2e", params={"force": "true"}, timeout=5)
    assert answer.status_code == 200, answer.text
    # A worker whose scheduler goes away while it closes can hang until SIGKILL, as on Marathon:
    # allow the grace period.
    wait_for("every task is gone", lambda: not marathon.pids(), 30 + 30, logs)
    # The stand-in forgets a task when its process ends; the process group's last member may
    # still be exiting at that moment.
    wait_for(
        "no launched process group has a process left",
        lambda: not [pid for pid in marathon.launched.values() if alive(pid)],
        10,
        logs,
    )
    assert requests.get(f"{marathon.url}/v2/apps", timeout=5).json() == {"apps": []}
