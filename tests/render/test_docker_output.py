"""The rendered Docker compose file and scaler config: parsed-output assertions, one per behaviour.

Validator: Debian's docker-compose (1.29, installed by scripts/ensure-apt.sh when missing) runs
`docker-compose config -q`, which checks the file against the Compose schema. The Compose v2
plugin (`docker compose config`) is not packaged in Debian bookworm, so it is not used.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dask_deploy.backends import BackendContext
from dask_deploy.backends.docker import load_settings, worker_container_spec
from docker_support import docker_compose
from render_support import render_with_settings

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((REPO / "tests" / "scenarios" / "docker").glob("*-values.yaml"))

RenderScenario = Callable[[str, "Path | dict[str, object]", Path], Path]


def scenario(name: str) -> Path:
    return REPO / "tests" / "scenarios" / "docker" / f"{name}-values.yaml"


def compose(out: Path) -> dict[str, Any]:
    return dict(yaml.safe_load((out / "compose.yaml").read_text()))


def embedded_config(out: Path) -> dict[str, Any]:
    text = compose(out)["services"]["scaler"]["environment"]["DASK_DEPLOY_SCALER_CONFIG"]
    return dict(yaml.safe_load(text))


@pytest.fixture(scope="module", name="docker_compose")
def docker_compose_fixture() -> str:
    return docker_compose()


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda path: path.name)
def test_compose_file_is_valid_for_docker_compose(
    render_scenario: RenderScenario, values: Path, tmp_path: Path, docker_compose: str
) -> None:
    out = render_scenario("docker", values, tmp_path)
    checked = subprocess.run(
        [docker_compose, "-f", str(out / "compose.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
        env={**os.environ, "DOCKER_SOCKET_GID": "0"},
        cwd=out,
    )
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda path: path.name)
def test_scheduler_and_scaler_only_both_on_the_host_network(
    render_scenario: RenderScenario, values: Path, tmp_path: Path
) -> None:
    services = compose(render_scenario("docker", values, tmp_path))["services"]
    assert sorted(services) == ["scaler", "scheduler"]
    assert {s["network_mode"] for s in services.values()} == {"host"}
    assert all("ports" not in s and "networks" not in s for s in services.values())


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda path: path.name)
def test_embedded_config_equals_the_file_and_the_backend_accepts_it(
    render_scenario: RenderScenario, values: Path, tmp_path: Path
) -> None:
    out = render_scenario("docker", values, tmp_path)
    config = embedded_config(out)
    assert config == yaml.safe_load((out / "scaler-config.yaml").read_text())
    assert config["backend"]["name"] == "docker"
    context = BackendContext(
        config["deployment"], config["scheduler"]["address"], config["backend"]["options"]
    )
    load_settings(context)  # raises SettingsError on any option the backend does not know


def test_defaults_images_names_and_addresses(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    out = render_scenario("docker", scenario("defaults"), tmp_path)
    services = compose(out)["services"]
    assert services["scheduler"]["image"] == "ghcr.io/dask-deploy/dask-deploy-scheduler:0.1.0"
    assert services["scaler"]["image"] == "ghcr.io/dask-deploy/dask-deploy-scaler:0.1.0"
    assert services["scheduler"]["container_name"] == "dask-scheduler"
    config = embedded_config(out)
    assert config["backend"]["options"]["image"] == "ghcr.io/dask-deploy/dask-deploy-worker:0.1.0"
    assert config["scheduler"]["address"] == "tcp://127.0.0.1:8786"
    command = services["scheduler"]["command"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--preload") + 1] == "dask_deploy.scheduler_preload"


def test_scaler_reaches_the_docker_socket_through_its_group(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    scaler = compose(render_scenario("docker", scenario("defaults"), tmp_path))["services"][
        "scaler"
    ]
    assert "/var/run/docker.sock:/var/run/docker.sock" in scaler["volumes"]
    assert scaler["group_add"] == [
        "${DOCKER_SOCKET_GID:?set DOCKER_SOCKET_GID to the group of /var/run/docker.sock}"
    ]
    (tmp_path / "custom").mkdir()
    custom = compose(render_scenario("docker", scenario("custom"), tmp_path / "custom"))
    assert custom["services"]["scaler"]["group_add"] == ["998"]


def test_scheduler_healthcheck_url_follows_the_dashboard_port(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    scheduler = compose(render_scenario("docker", scenario("custom"), tmp_path))["services"][
        "scheduler"
    ]
    assert scheduler["environment"]["DASK_DEPLOY_HEALTH_URL"] == "http://127.0.0.1:9787/health"


def test_tls_switches_addresses_and_mounts_the_files_read_only(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    out = render_scenario("docker", scenario("tls"), tmp_path)
    config = embedded_config(out)
    assert config["scheduler"]["address"].startswith("tls://")
    assert config["scheduler"]["security"] == {
        "ca_file": "/srv/dask/tls/ca.pem",
        "cert_file": "/srv/dask/tls/tls.crt",
        "key_file": "/srv/dask/tls/tls.key",
    }
    mounts = [
        f"{f}:{f}:ro"
        for f in ("/srv/dask/tls/ca.pem", "/srv/dask/tls/tls.crt", "/srv/dask/tls/tls.key")
    ]
    assert config["backend"]["options"]["volumes"] == mounts
    services = compose(out)["services"]
    assert services["scheduler"]["volumes"] == mounts
    assert set(mounts) <= set(services["scaler"]["volumes"])
    worker_args = config["backend"]["options"]["worker_args"]
    assert worker_args[worker_args.index("--tls-key") + 1] == "/srv/dask/tls/tls.key"
    command = services["scheduler"]["command"]
    assert "--tls-cert" in command
    # With --host 127.0.0.1 and no --protocol, `dask scheduler` would listen on tcp://.
    assert command[command.index("--protocol") + 1] == "tls"


def test_custom_resources_and_extra_args_reach_workers_and_scheduler(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    out = render_scenario("docker", scenario("custom"), tmp_path)
    options = embedded_config(out)["backend"]["options"]
    args = options["worker_args"]
    assert args[args.index("--nthreads") + 1] == "4"
    # The backend passes memory_limit as --memory-limit and as the container's limit.
    assert "--memory-limit" not in args and options["memory_limit"] == "8GiB"
    assert options["cpus"] == 4
    assert args[-2:] == ["--resources", "GPU=1"]
    assert options["environment"] == {"OMP_NUM_THREADS": "1"}
    assert options["stop_timeout"] == 60
    scheduler = compose(out)["services"]["scheduler"]
    assert scheduler["command"][-2:] == ["--idle-timeout", "3600"]
    assert "--preload" not in scheduler["command"]
    assert scheduler["image"] == "registry.example.org/dask/dask-deploy-scheduler:0.1.0-rc1"


def test_fixed_policy_without_metrics(render_scenario: RenderScenario, tmp_path: Path) -> None:
    config = embedded_config(render_scenario("docker", scenario("custom"), tmp_path))
    assert config["policy"] == {"name": "fixed", "minimum": 2, "maximum": 4, "options": {}}
    assert "metrics" not in config


def test_every_container_is_labelled_with_deployment_and_role(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    services = compose(render_scenario("docker", scenario("custom"), tmp_path))["services"]
    for role, service in services.items():
        assert service["labels"] == {
            "dask-deploy.deployment": "analytics",
            "dask-deploy.role": role,
        }


def test_scheduler_and_scaler_are_confined_and_limited(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    services = compose(render_scenario("docker", scenario("defaults"), tmp_path))["services"]
    for service in services.values():
        assert service["user"] == "10001:10001"
        assert service["read_only"] is True
        assert service["tmpfs"] == ["/tmp"]
        assert service["security_opt"] == ["no-new-privileges:true"]
        assert service["cap_drop"] == ["ALL"]
    assert (services["scheduler"]["mem_limit"], services["scheduler"]["cpus"]) == ("2g", 1)
    assert (services["scaler"]["mem_limit"], services["scaler"]["cpus"]) == ("512m", 0.5)


def test_worker_containers_the_backend_starts_are_confined_and_limited(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    config = embedded_config(render_scenario("docker", scenario("custom"), tmp_path))
    context = BackendContext(
        config["deployment"], config["scheduler"]["address"], config["backend"]["options"]
    )
    spec = worker_container_spec(load_settings(context), 0, 0.0)
    assert spec["user"] == "10001:10001" and spec["read_only"] is True
    assert spec["tmpfs"] == {"/tmp": ""} and spec["cap_drop"] == ["ALL"]
    assert spec["security_opt"] == ["no-new-privileges:true"]
    assert spec["mem_limit"] == 8 * 2**30 and spec["nano_cpus"] == 4 * 10**9
    command = spec["command"]
    assert command[command.index("--memory-limit") + 1] == str(8 * 2**30)
    assert command[command.index("--local-directory") + 1] == "/home/dask"
    assert spec["mounts"] == [{"Target": "/home/dask", "Type": "volume", "ReadOnly": False}]


@pytest.mark.parametrize(
    "setting", ["scaler.maximum=-1", "hardening.user=0:0"], ids=["negative-maximum", "root-user"]
)
def test_bad_setting_is_refused_naming_the_key_and_writing_nothing(
    setting: str, tmp_path: Path
) -> None:
    key, value = setting.split("=", 1)
    rendered = render_with_settings("docker", {key: value}, tmp_path / "out")
    assert rendered.returncode == 2, rendered.stderr
    assert key in rendered.stderr
    assert not (tmp_path / "out").exists()
