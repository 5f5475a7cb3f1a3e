"""The rendered Marathon apps: valid per Marathon's API definition, one assertion per behaviour."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dask_deploy.backends import BackendContext
from dask_deploy.backends.marathon import load_settings
from dask_deploy.config import parse_config

pytestmark = pytest.mark.marathon

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO.parent / "shared" / "reference" / "marathon"
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


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.name)
def test_every_app_validates_against_marathons_api_definition(
    render_scenario: RenderScenario, values: Path, tmp_path: Path
) -> None:
    if not (SCHEMAS / "App.schema.json").is_file():
        pytest.skip(f"Marathon JSON Schemas not found at {SCHEMAS}; cannot validate")
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
    assert option(words(worker), "--memory-limit") == f"{worker['mem']}MiB"
    assert worker["cpus"] == int(option(words(worker), "--nthreads")) == 8


def test_health_checks_probe_dask_health_endpoints(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    rendered = apps(render_scenario("marathon", scenario("defaults"), tmp_path))
    for name in ("scheduler", "worker"):
        app = rendered[name]
        (check,) = app["healthChecks"]
        port = app["portDefinitions"][check["portIndex"]]["name"]
        assert check["path"] == "/health"
        assert f"$PORT_{port.upper()}" in option(words(app), "--dashboard-address")


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
    assert option(words(rendered["worker"]), "worker") == "tcp://scheduler-dask.marathon.mesos:8786"


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
    assert words(scaler)[-2:] == ["dask_deploy.cli", "scale"]  # config from the environment


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


def test_a_retired_worker_keeps_its_task_until_the_scaler_kills_it(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    worker = apps(render_scenario("marathon", scenario("defaults"), tmp_path))["worker"]
    lines = worker["cmd"].splitlines()
    assert lines[0].endswith(" &")  # the worker runs in the background of the task's shell
    assert 'trap \'kill -TERM "$worker"' in worker["cmd"]  # SIGTERM reaches the worker
    assert 'wait "$worker" || exit' in lines  # a crash ends the task; Marathon restarts it
    assert lines[-1] == "exec sleep infinity"  # a clean exit (retired) waits to be killed
