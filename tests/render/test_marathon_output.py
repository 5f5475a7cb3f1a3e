"""The rendered Marathon apps: valid per Marathon's API definition, one assertion per behaviour."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dask_deploy.backends import BackendContext
from dask_deploy.backends.marathon import load_settings
from dask_deploy.config import parse_config
from dask_deploy.testing.marathon import find_schemas
from render_support import option, render_with_settings

pytestmark = pytest.mark.marathon

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = find_schemas()
SCENARIOS = sorted((REPO / "tests" / "scenarios" / "marathon").glob("*-values.yaml"))
APPS = ("scheduler", "scaler", "worker")
#: distributed's Worker.close() waits up to 30 s; SIGKILL must not cut a graceful close short.
WORKER_CLOSE_SECONDS = 30

RenderScenario = Callable[[str, "Path | dict[str, object]", Path], Path]


def scenario(name: str) -> Path:
    return REPO / "tests" / "scenarios" / "marathon" / f"{name}-values.yaml"


def apps(out: Path) -> dict[str, dict[str, Any]]:
    return {name: json.loads((out / f"{name}-app.json").read_text()) for name in APPS}


def words(app: dict[str, Any]) -> list[str]:
    return shlex.split(app["cmd"])


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.name)
def test_every_app_validates_against_marathons_api_definition(
    render_scenario: RenderScenario, values: Path, tmp_path: Path
) -> None:
    import jsonschema

    validator = jsonschema.Draft7Validator(json.loads((SCHEMAS / "App.schema.json").read_text()))
    for name, app in apps(render_scenario("marathon", values, tmp_path)).items():
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(app)]
        assert not errors, f"{name}-app.json: {errors}"
        assert not ("cmd" in app and "args" in app), f"{name}-app.json has both cmd and args"


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.name)
def test_worker_name_is_the_marathon_task_id(
    render_scenario: RenderScenario, values: Path, tmp_path: Path
) -> None:
    worker = apps(render_scenario("marathon", values, tmp_path))["worker"]
    assert option(words(worker), "--name") == "$MESOS_TASK_ID"
    assert '--name "$MESOS_TASK_ID"' in worker["cmd"]


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.name)
def test_worker_app_starts_with_no_instances(
    render_scenario: RenderScenario, values: Path, tmp_path: Path
) -> None:
    assert apps(render_scenario("marathon", values, tmp_path))["worker"]["instances"] == 0


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.name)
def test_kill_grace_period_covers_a_graceful_worker_close(
    render_scenario: RenderScenario, values: Path, tmp_path: Path
) -> None:
    worker = apps(render_scenario("marathon", values, tmp_path))["worker"]
    assert worker["taskKillGracePeriodSeconds"] >= WORKER_CLOSE_SECONDS


def test_custom_grace_period_is_taken_from_values(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    worker = apps(render_scenario("marathon", scenario("custom"), tmp_path))["worker"]
    assert worker["taskKillGracePeriodSeconds"] == 120


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.name)
def test_ports_used_by_commands_are_declared(
    render_scenario: RenderScenario, values: Path, tmp_path: Path
) -> None:
    for name, app in apps(render_scenario("marathon", values, tmp_path)).items():
        declared = {p["name"].upper() for p in app.get("portDefinitions", [])}
        used = set(re.findall(r"\$PORT_([A-Z0-9_]+)", app["cmd"]))
        assert used <= declared, f"{name}-app.json uses undeclared ports {used - declared}"


def test_scheduler_ports_are_required_so_its_address_is_stable(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    scheduler = apps(render_scenario("marathon", scenario("custom"), tmp_path))["scheduler"]
    assert scheduler["requirePorts"] is True
    assert [p["port"] for p in scheduler["portDefinitions"]] == [9786, 9787]
    assert option(words(scheduler), "--port") == "$PORT_COMM"


def test_memory_limit_is_derived_from_mem(render_scenario: RenderScenario, tmp_path: Path) -> None:
    worker = apps(render_scenario("marathon", scenario("custom"), tmp_path))["worker"]
    assert worker["mem"] == 32768
    # Headroom for the nanny and the shell: Mesos kills the task at mem, Dask pauses before.
    assert option(words(worker), "--memory-limit") == f"{worker['mem'] - 256}MiB"
    assert worker["cpus"] == int(option(words(worker), "--nthreads")) == 8


def test_the_health_check_asks_where_the_dashboard_listens(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    # MESOS_HTTP goes to the task's loopback; the dashboard listens on $HOST. A COMMAND check
    # runs inside the task with its environment and asks $HOST.
    rendered = apps(render_scenario("marathon", scenario("defaults"), tmp_path))
    scheduler = rendered["scheduler"]
    (check,) = scheduler["healthChecks"]
    assert check["protocol"] == "COMMAND"
    command = check["command"]["value"]
    assert 'os.environ["HOST"], os.environ["PORT_DASHBOARD"]' in command and "/health" in command
    assert option(words(scheduler), "--dashboard-address") == "$HOST:$PORT_DASHBOARD"
    assert (check["gracePeriodSeconds"], check["maxConsecutiveFailures"]) == (120, 3)
    # Workers: the scheduler judges them; a health check would hold the app's deployment lock.
    assert rendered["worker"]["healthChecks"] == []


def test_default_fixed_ports_are_inside_the_agents_default_offer(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    for name, app in apps(render_scenario("marathon", scenario("defaults"), tmp_path)).items():
        fixed = [p["port"] for p in app.get("portDefinitions", []) if p["port"]]
        assert not fixed or app["requirePorts"] is True, name
        assert all(31000 <= port <= 32000 for port in fixed), f"{name}: {fixed}"


def test_labels_name_the_deployment_and_component(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    for name, app in apps(render_scenario("marathon", scenario("custom"), tmp_path)).items():
        assert app["id"] == f"/analytics/{name}"
        assert app["labels"]["DASK_DEPLOY_DEPLOYMENT"] == "analytics"
        assert app["labels"]["DASK_DEPLOY_COMPONENT"] == name
        assert app["labels"]["team"] == "analytics"


def test_tls_scenario_mounts_certificates_and_uses_tls_addresses(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    out = render_scenario("marathon", scenario("tls"), tmp_path)
    rendered = apps(out)
    for name, app in rendered.items():
        assert {"containerPath": "/etc/dask/tls", "hostPath": "/etc/ssl/dask", "mode": "RO"} in app[
            "container"
        ]["volumes"], name
    worker = words(rendered["worker"])
    assert option(worker, "worker").startswith("tls://")
    assert option(worker, "--tls-ca-file") == "/etc/dask/tls/ca.pem"
    assert option(words(rendered["scheduler"]), "--protocol") == "tls"
    config = yaml.safe_load((out / "scaler-config.yaml").read_text())
    assert config["scheduler"]["address"].startswith("tls://")
    assert config["scheduler"]["security"]["key_file"] == "/etc/dask/tls/tls.key"


def test_without_tls_nothing_is_mounted_and_addresses_are_tcp(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    rendered = apps(render_scenario("marathon", scenario("defaults"), tmp_path))
    assert all(not app["container"]["volumes"] for app in rendered.values())
    assert (
        option(words(rendered["worker"]), "worker") == "tcp://scheduler-dask.marathon.mesos:31786"
    )


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.name)
def test_scaler_carries_its_configuration_for_the_marathon_backend(
    render_scenario: RenderScenario, values: Path, tmp_path: Path
) -> None:
    out = render_scenario("marathon", values, tmp_path)
    scaler = apps(out)["scaler"]
    embedded = scaler["env"]["DASK_DEPLOY_SCALER_CONFIG"]
    assert embedded == (out / "scaler-config.yaml").read_text()
    config = yaml.safe_load(embedded)
    assert config["backend"]["name"] == "marathon"
    assert config["backend"]["options"]["app_id"] == apps(out)["worker"]["id"]
    parsed = parse_config(config)  # the scaler accepts it as is
    assert parsed.deployment == config["deployment"]
    options = {**config["backend"]["options"], "credentials_file": None}
    load_settings(BackendContext(parsed.deployment, config["scheduler"]["address"], options), {})
    command = words(scaler)
    assert command[command.index("dask_deploy.cli") + 1] == "scale"
    assert "--config" not in command  # the configuration comes from the environment


def test_no_credentials_are_rendered(render_scenario: RenderScenario, tmp_path: Path) -> None:
    out = render_scenario("marathon", scenario("custom"), tmp_path)
    text = "\n".join(path.read_text() for path in sorted(out.iterdir()))
    assert "/etc/dask-deploy/marathon-credentials.yaml" in text
    assert not re.search(r"(password|token|MARATHON_AUTH)\W*[:=]", text, re.IGNORECASE)


def test_each_app_runs_its_roles_image(render_scenario: RenderScenario, tmp_path: Path) -> None:
    # images/README.md: one image per role; there is no role-less image.
    rendered = apps(render_scenario("marathon", scenario("defaults"), tmp_path))
    for name, app in rendered.items():
        image = app["container"]["docker"]["image"]
        assert image == f"ghcr.io/dask-deploy/dask-deploy-{name}:0.1.0"


def test_without_an_image_commands_run_on_the_agent(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    rendered = apps(render_scenario("marathon", scenario("custom"), tmp_path))
    for app in rendered.values():
        assert "container" not in app
        assert "/opt/dask/bin/python" in words(app)


def task_script(tmp_path: Path, worker_exit: int, scheduler_port: int) -> Path:
    """The rendered worker task's shell script, with a stand-in for `dask worker`."""
    out = tmp_path / f"rendered-{worker_exit}-{scheduler_port}"
    settings = {
        "python": sys.executable,
        "scheduler.host": "127.0.0.1",
        "scheduler.port": scheduler_port,
    }
    rendered = render_with_settings("marathon", settings, out)
    assert rendered.returncode == 0, rendered.stderr
    lines = apps(out)["worker"]["cmd"].splitlines()
    assert lines[0].endswith(" &") and " -m dask worker " in lines[0]
    lines[0] = f"(sleep 0.2; exit {worker_exit}) &"  # the worker, ending as told
    script = tmp_path / f"task-{worker_exit}-{scheduler_port}.sh"
    script.write_text("\n".join(lines) + "\n")
    return script


def run_task(script: Path, seconds: float) -> int | None:
    """The task's exit status, or None if it is still running after ``seconds``."""
    task = subprocess.Popen(["bash", str(script)], start_new_session=True)
    try:
        return task.wait(seconds)
    except subprocess.TimeoutExpired:
        return None
    finally:
        if task.poll() is None:
            os.killpg(task.pid, signal.SIGTERM)
            assert task.wait(10) == 143, "SIGTERM (Marathon's kill) ends a waiting task at once"


def test_a_crashed_worker_ends_its_task_so_marathon_restarts_it(tmp_path: Path) -> None:
    with socket.socket() as closed:  # bound, not listening: refuses, and is nobody else's
        closed.bind(("127.0.0.1", 0))
        assert run_task(task_script(tmp_path, 3, closed.getsockname()[1]), 10) == 3


def test_a_retired_worker_keeps_its_task_until_the_scaler_kills_it(tmp_path: Path) -> None:
    with socket.socket() as scheduler:
        scheduler.bind(("127.0.0.1", 0))
        scheduler.listen()
        # The scheduler still answers: the clean exit was a retirement, the task waits.
        assert run_task(task_script(tmp_path, 0, scheduler.getsockname()[1]), 3) is None


def test_a_worker_that_lost_its_scheduler_ends_its_task_for_a_fresh_one(tmp_path: Path) -> None:
    # A clean exit with nobody on the scheduler's port: not a zombie task until startup_timeout.
    # The port stays bound (not listening) meanwhile: it refuses, and no other test's process
    # can take it and answer.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        assert run_task(task_script(tmp_path, 0, closed.getsockname()[1]), 10) == 1


def test_every_app_runs_as_the_non_root_user_from_values(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    # Without "user", Marathon runs tasks as its own --mesos_user, often root.
    defaults = apps(render_scenario("marathon", scenario("defaults"), tmp_path))
    assert {app["user"] for app in defaults.values()} == {"nobody"}
    custom = apps(render_scenario("marathon", scenario("custom"), tmp_path))
    assert {app["user"] for app in custom.values()} == {"dask"}


def test_root_user_is_refused_naming_the_key(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rendered = render_with_settings("marathon", {"security.user": "root"}, out)
    assert rendered.returncode == 2, rendered.stderr
    assert "security.user: got 'root', expected a string other than \"root\"" in rendered.stderr
    assert "Traceback" not in rendered.stderr and not out.exists()


def test_the_scaler_container_sees_its_credentials_file_and_ca_bundle(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    values = {
        "marathon": {
            "url": "https://marathon.mesos:8443",
            "credentials_file": "/etc/dask-deploy/marathon.yaml",
            "tls_verify": "/etc/ssl/marathon-ca.pem",
        }
    }
    out = render_scenario("marathon", values, tmp_path)
    rendered = apps(out)
    volumes = rendered["scaler"]["container"]["volumes"]
    for path in ("/etc/dask-deploy/marathon.yaml", "/etc/ssl/marathon-ca.pem"):
        assert {"containerPath": path, "hostPath": path, "mode": "RO"} in volumes
    for other in ("scheduler", "worker"):
        assert not rendered[other]["container"]["volumes"], f"{other} gets no credentials"
    config = yaml.safe_load((out / "scaler-config.yaml").read_text())
    options = config["backend"]["options"]
    assert options["credentials_file"] == "/etc/dask-deploy/marathon.yaml"
    assert options["tls_verify"] == "/etc/ssl/marathon-ca.pem"
    # Without credentials or a bundle, nothing is mounted.
    plain = apps(render_scenario("marathon", scenario("defaults"), tmp_path))
    assert plain["scaler"]["container"]["volumes"] == []


def test_worker_resources_placement_and_relaunch_settings(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    rendered = apps(render_scenario("marathon", scenario("custom"), tmp_path))
    worker = rendered["worker"]
    assert (worker["disk"], worker["gpus"]) == (20480, 1)
    assert worker["constraints"] == [["rack_id", "GROUP_BY", "2"]]
    assert rendered["scheduler"]["constraints"] == [["hostname", "UNIQUE"]]
    assert option(words(worker), "--local-directory") == "$MESOS_SANDBOX"
    for app in rendered.values():
        assert (app["backoffSeconds"], app["maxLaunchDelaySeconds"]) == (1, 300)
        assert app["unreachableStrategy"] == {
            "inactiveAfterSeconds": 60,
            "expungeAfterSeconds": 120,
        }


def test_the_scalers_metrics_listen_on_the_agents_address_only(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    scaler = apps(render_scenario("marathon", scenario("defaults"), tmp_path))["scaler"]
    assert option(words(scaler), "--metrics-host") == "$HOST"
    config = yaml.safe_load(scaler["env"]["DASK_DEPLOY_SCALER_CONFIG"])
    assert config["metrics"]["port"] == scaler["portDefinitions"][0]["port"] == 31790
    off = apps(render_scenario("marathon", {"scaler": {"metrics_port": None}}, tmp_path))
    assert "--metrics-host" not in words(off["scaler"])
