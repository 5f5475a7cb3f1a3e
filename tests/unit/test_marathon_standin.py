"""The Marathon stand-in behaves like Marathon for what the backend and a user rely on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from dask_deploy.testing.marathon import (
    AGENT_HOST,
    SCHEMAS,
    MarathonStandIn,
    Validator,
    find_schemas,
)
from marathon_support import free_offered_port, marathon_standin

pytestmark = pytest.mark.marathon


@pytest.fixture
def marathon(tmp_path: Path) -> Iterator[MarathonStandIn]:
    with marathon_standin(workdir=tmp_path / "sandboxes", deployment_seconds=0.0) as standin:
        yield standin


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting until {what}")


def post(standin: MarathonStandIn, app: dict[str, Any]) -> requests.Response:
    return requests.post(f"{standin.url}/v2/apps", json=app, timeout=5)


def tasks(standin: MarathonStandIn, app_id: str) -> list[dict[str, Any]]:
    body = requests.get(f"{standin.url}/v2/apps{app_id}/tasks", timeout=5).json()
    return list(body["tasks"])


def test_task_gets_marathons_environment(marathon: MarathonStandIn) -> None:
    app = {
        "id": "/t/env",
        "cmd": 'echo "$MESOS_TASK_ID $MARATHON_APP_ID $HOST $PORT0 $PORT_HTTP $PORTS" > out; '
        "sleep 30",
        "instances": 1,
        "portDefinitions": [{"port": 0, "name": "http"}, {"port": 0, "name": "comm"}],
    }
    assert post(marathon, app).status_code == 201
    (task,) = wait_for(lambda: tasks(marathon, "/t/env"), "the task starts")
    out = marathon.workdir / task["id"] / "out"
    task_id, app_id, host, port0, port_http, ports = wait_for(
        lambda: out.is_file() and out.read_text().split(), "the task writes its environment"
    )
    # $HOST is the agent's address, not the loopback (where MESOS_HTTP checks go).
    assert (task_id, app_id, host) == (task["id"], "/t/env", AGENT_HOST)
    assert host == task["host"] != "127.0.0.1"
    assert port0 == port_http == str(task["ports"][0])
    low, high = marathon.port_range
    assert all(low <= port <= high for port in task["ports"])  # the agent's offer
    assert ports == ",".join(map(str, task["ports"]))


def test_sigterm_then_sigkill_after_the_grace_period(marathon: MarathonStandIn) -> None:
    app = {
        "id": "/t/stubborn",
        "cmd": "trap '' TERM; while true; do sleep 0.1; done",
        "instances": 1,
        "taskKillGracePeriodSeconds": 1,
    }
    post(marathon, app)
    (task,) = wait_for(lambda: tasks(marathon, "/t/stubborn"), "the task starts")
    started = time.monotonic()
    answer = requests.delete(
        f"{marathon.url}/v2/apps/t/stubborn/tasks/{task['id']}",
        params={"scale": "true"},
        timeout=5,
    )
    assert answer.status_code == 200 and "deploymentId" in answer.json()
    wait_for(lambda: marathon.ended.get(task["id"]) == "TASK_KILLED", "SIGKILL ends it")
    assert time.monotonic() - started >= 1.0
    assert not tasks(marathon, "/t/stubborn")


def test_a_task_that_exits_is_replaced(marathon: MarathonStandIn) -> None:
    app = {"id": "/t/flaky", "cmd": "sleep 0.2", "instances": 1, "backoffSeconds": 1}
    assert post(marathon, app).status_code == 201
    wait_for(lambda: len(marathon.launched) >= 2, "Marathon restarts the finished task")
    assert "TASK_FINISHED" in marathon.ended.values()


def test_launch_delay_grows_survives_scaling_and_is_forgotten_once_overdue(
    marathon: MarathonStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_body = {"id": "/t/crash", "cmd": "sleep 30", "instances": 1, "backoffSeconds": 1}
    assert post(marathon, app_body).status_code == 201
    app = marathon.apps["/t/crash"]

    def crash() -> None:
        task = wait_for(lambda: tasks(marathon, "/t/crash"), "a task")[0]
        os.killpg(marathon.launched[task["id"]], signal.SIGKILL)
        wait_for(lambda: task["id"] in marathon.ended, "the task is seen failed")

    crash()
    crash()
    assert app.failures == 2  # in a row: the delay grew
    requests.put(f"{marathon.url}/v2/apps/t/crash", json={"instances": 1}, timeout=5)
    assert app.failures == 2  # a scale change keeps Marathon's launch delay
    monkeypatch.setattr("dask_deploy.testing.marathon.DELAY_CLEANUP_SECONDS", 0.0)
    time.sleep(0.5)  # the delay is overdue and cleaned up
    crash()
    assert app.failures == 1
    assert marathon.ended and set(marathon.ended.values()) == {"TASK_FAILED"}


def test_faults_over_once_every_delayed_answer_is_sent(marathon: MarathonStandIn) -> None:
    assert marathon.faults_over()
    marathon.inject(None, delay=1.0, times=1, method="GET")
    assert not marathon.faults_over()
    with pytest.raises(requests.Timeout):
        requests.get(f"{marathon.url}/v2/apps", timeout=0.3)
    assert not marathon.faults_over()  # spent, but still "hanging"
    wait_for(marathon.faults_over, "the hung answer is over", timeout=3)
    marathon.inject(403, method="PUT")
    denied = requests.put(f"{marathon.url}/v2/apps/t/x", json={"instances": 1}, timeout=5)
    assert denied.status_code == 403
    assert denied.json() == {"message": "Not Authorized to perform this action!"}
    assert marathon.faults_over()


def test_kill_without_scale_restarts_and_with_scale_does_not(marathon: MarathonStandIn) -> None:
    post(marathon, {"id": "/t/kill", "cmd": "sleep 30", "instances": 2})
    first, second = wait_for(
        lambda: len(tasks(marathon, "/t/kill")) == 2 and tasks(marathon, "/t/kill"), "2 tasks"
    )
    requests.post(f"{marathon.url}/v2/tasks/delete", json={"ids": [first["id"]]}, timeout=5)
    wait_for(lambda: len(marathon.launched) == 3, "a replacement is launched")
    answer = requests.post(
        f"{marathon.url}/v2/tasks/delete?scale=True", json={"ids": [second["id"]]}, timeout=5
    )
    assert answer.status_code == 200
    app = requests.get(f"{marathon.url}/v2/apps/t/kill", timeout=5).json()["app"]
    assert app["instances"] == 1
    time.sleep(0.5)
    assert len(marathon.launched) == 3


def test_deleting_an_app_kills_its_tasks(marathon: MarathonStandIn) -> None:
    post(marathon, {"id": "/t/gone", "cmd": "sleep 30", "instances": 2})
    wait_for(lambda: len(marathon.pids()) == 2, "2 processes")
    assert requests.delete(f"{marathon.url}/v2/apps/t/gone", timeout=5).status_code == 200
    wait_for(lambda: not marathon.pids(), "no process left")
    assert requests.get(f"{marathon.url}/v2/apps/t/gone", timeout=5).status_code == 404


def test_marathon_shaped_errors(marathon: MarathonStandIn) -> None:
    assert post(marathon, {"id": "/t/both", "cmd": "true", "args": ["x"]}).status_code == 422
    post(marathon, {"id": "/t/dup", "cmd": "sleep 30", "instances": 0})
    duplicate = post(marathon, {"id": "/t/dup", "cmd": "sleep 30"})
    assert duplicate.status_code == 409
    assert "already exists" in duplicate.json()["message"]
    missing = requests.get(f"{marathon.url}/v2/apps/t/missing", timeout=5)
    assert missing.status_code == 404 and "does not exist" in missing.json()["message"]
    scale = requests.put(f"{marathon.url}/v2/apps/t/dup", json={"instances": -1}, timeout=5)
    assert scale.status_code == 422 and scale.json()["details"][0]["path"] == "/instances"
    marathon.inject(409, method="PUT")
    locked = requests.put(f"{marathon.url}/v2/apps/t/dup", json={"instances": 1}, timeout=5)
    assert locked.status_code == 409 and locked.json()["deployments"][0]["id"]
    assert requests.get(f"{marathon.url}/ping", timeout=5).text == "pong"
    assert requests.get(f"{marathon.url}/v2/info", timeout=5).json()["name"] == "marathon"


def test_schemas_ship_in_the_package_with_their_provenance() -> None:
    folder = find_schemas()
    assert folder == SCHEMAS and (folder / "App.schema.json").is_file()
    provenance = (folder / "README.md").read_text()
    assert "90619da70d79" in provenance and "Apache-2.0" in provenance


def test_a_folder_without_schemas_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        Validator(tmp_path)


def test_prose_rules_apply_beside_the_schemas() -> None:
    validator = Validator(find_schemas())
    with pytest.raises(Exception, match="not valid"):
        validator.check("App", {"id": "/x", "cmd": "true", "args": ["y"]})


def test_module_entry_point_serves_and_stops(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "dask_deploy.testing.marathon", "--port", "0",
         "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.rsplit(" ", 1)[-1].strip()
        assert requests.get(f"{url}/ping", timeout=5).text == "pong"
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
        assert process.stdout is not None
        process.stdout.close()


def test_answers_validate_against_marathons_response_schemas(marathon: MarathonStandIn) -> None:
    folder = find_schemas()
    import json

    import jsonschema

    def check(schema: str, body: Any) -> None:
        document = json.loads((folder / f"{schema}.schema.json").read_text())
        errors = [e.message for e in jsonschema.Draft7Validator(document).iter_errors(body)]
        assert not errors, f"{schema}: {errors}"

    post(marathon, {"id": "/t/shape", "cmd": "sleep 30", "instances": 1})
    wait_for(lambda: tasks(marathon, "/t/shape"), "the task starts")
    check("TaskList", requests.get(f"{marathon.url}/v2/tasks", timeout=5).json())
    check("AppList", requests.get(f"{marathon.url}/v2/apps", timeout=5).json())
    check("MarathonInfo", requests.get(f"{marathon.url}/v2/info", timeout=5).json())
    scaled = requests.put(f"{marathon.url}/v2/apps/t/shape", json={"instances": 2}, timeout=5)
    check("DeploymentResult", scaled.json())
    invalid = post(marathon, {"id": "/t/Bad", "cmd": "true"}).json()
    check("Error", invalid)


def test_a_required_port_outside_the_agents_offer_never_launches(
    marathon: MarathonStandIn,
) -> None:
    app = {
        "id": "/t/fixed",
        "cmd": "sleep 30",
        "instances": 1,
        "portDefinitions": [{"port": 8786, "name": "comm"}],
        "requirePorts": True,
    }
    assert post(marathon, app).status_code == 201
    wait_for(lambda: marathon.waiting("/t/fixed"), "the app waits for an offer")
    assert "{}-{}".format(*marathon.port_range) in marathon.waiting("/t/fixed")
    time.sleep(0.5)  # several reconcile rounds: still nothing launched
    assert tasks(marathon, "/t/fixed") == [] and not marathon.launched
    offered = free_offered_port(marathon)
    inside = {**app, "id": "/t/inside", "portDefinitions": [{"port": offered, "name": "comm"}]}
    assert post(marathon, inside).status_code == 201
    (task,) = wait_for(lambda: tasks(marathon, "/t/inside"), "a port inside the offer launches")
    assert task["ports"] == [offered]


SERVE_ON_HOST = f'exec {sys.executable} -m http.server --bind "$HOST" "$PORT0" > /dev/null 2>&1'


def health_app(app_id: str, check: dict[str, Any]) -> dict[str, Any]:
    timing = {"delaySeconds": 0, "gracePeriodSeconds": 0, "intervalSeconds": 1}
    return {
        "id": app_id,
        "cmd": SERVE_ON_HOST,
        "instances": 1,
        "portDefinitions": [{"port": 0, "name": "http"}],
        "healthChecks": [{**timing, "timeoutSeconds": 1, "maxConsecutiveFailures": 2, **check}],
    }


def test_mesos_http_checks_go_to_the_loopback_and_kill_after_max_failures(
    marathon: MarathonStandIn,
) -> None:
    # Listening on $HOST only: a MESOS_HTTP check (to 127.0.0.1) fails and Mesos kills the task.
    check = {"protocol": "MESOS_HTTP", "path": "/", "portIndex": 0}
    assert post(marathon, health_app("/t/mesos-http", check)).status_code == 201
    (first,) = wait_for(lambda: tasks(marathon, "/t/mesos-http"), "the task starts")
    wait_for(lambda: first["id"] in marathon.unhealthy_kills, "the task is killed", 20)
    wait_for(lambda: marathon.ended.get(first["id"]) == "TASK_KILLED", "the kill ends it", 20)
    wait_for(
        lambda: [t for t in tasks(marathon, "/t/mesos-http") if t["id"] != first["id"]],
        "Marathon launches a replacement",
    )


def test_a_command_check_asking_host_keeps_the_task(marathon: MarathonStandIn) -> None:
    fetch = 'urllib.request.urlopen("http://%s:%s/" % (os.environ["HOST"], os.environ["PORT0"]))'
    command = f"python3 -c 'import os, urllib.request; {fetch}'"
    # Failures while the server starts (before the first pass) are in the grace period.
    check = {
        "protocol": "COMMAND",
        "command": {"value": command},
        "gracePeriodSeconds": 60,
        "timeoutSeconds": 10,
    }
    assert post(marathon, health_app("/t/command", check)).status_code == 201
    (task,) = wait_for(lambda: tasks(marathon, "/t/command"), "the task starts")

    def healthy() -> bool:
        (current,) = tasks(marathon, "/t/command")
        return [r["alive"] for r in current.get("healthCheckResults", [])] == [True]

    wait_for(healthy, "the check passes", 20)
    time.sleep(3)  # three more checks, every one passing
    assert healthy() and not marathon.unhealthy_kills
    assert [t["id"] for t in tasks(marathon, "/t/command")] == [task["id"]]
