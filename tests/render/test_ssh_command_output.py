"""Rendered ssh and command output: shellcheck-clean scripts, one assertion per behaviour."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dask_deploy.backends import BackendContext
from dask_deploy.backends.command import load_settings as command_settings
from dask_deploy.backends.ssh import load_settings as ssh_settings
from render_support import command_args, render_with_settings

REPO = Path(__file__).resolve().parents[2]
SHELLCHECK = Path(sys.executable).parent / "shellcheck"
SCENARIOS = sorted(
    path
    for backend in ("ssh", "command")
    for path in (REPO / "tests" / "scenarios" / backend).glob("*-values.yaml")
)

RenderScenario = Callable[[str, "Path | dict[str, Any]", Path], Path]


def scaler_options(out: Path) -> dict[str, Any]:
    options: dict[str, Any] = yaml.safe_load((out / "scaler-config.yaml").read_text())
    return options


def backend_context(config: dict[str, Any]) -> BackendContext:
    address = config["scheduler"]["address"]
    return BackendContext(config["deployment"], address, config["backend"]["options"])


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_rendered_script_passes_bash_n_and_shellcheck(
    render_scenario: RenderScenario, values: Path, tmp_path: Path
) -> None:
    out = render_scenario(values.parent.name, values, tmp_path)
    for script in sorted(out.glob("*.sh")):
        syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert syntax.returncode == 0, f"{script.name}: {syntax.stderr}"
        lint = subprocess.run([str(SHELLCHECK), str(script)], capture_output=True, text=True)
        assert lint.returncode == 0, f"{script.name}:\n{lint.stdout}{lint.stderr}"


def test_ssh_scheduler_listens_where_the_hosts_reach_it_and_the_scaler_uses_it(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    out = render_scenario("ssh", {"scheduler": {"host": "head.lab", "port": 8800}}, tmp_path)
    args = command_args((out / "scheduler-start.sh").read_text(), "dask scheduler")
    assert args[args.index("--host") + 1] == "head.lab"
    assert args[args.index("--port") + 1] == "8800"
    assert "dask_deploy.scheduler_preload" in args
    config = scaler_options(out)
    assert config["scheduler"]["address"] == "tcp://head.lab:8800"


def test_ssh_worker_arguments_carry_resources_tls_and_the_host(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    values = {
        "worker": {"threads": 3, "memory": "6GiB", "extra_args": ["--resources", "GPU=1"]},
        "tls": {"enabled": True},
    }
    config = scaler_options(render_scenario("ssh", values, tmp_path))
    settings = ssh_settings(
        BackendContext(
            config["deployment"], config["scheduler"]["address"], config["backend"]["options"]
        )
    )
    args = list(settings.worker_args)
    assert args[args.index("--nthreads") + 1] == "3"
    assert args[args.index("--memory-limit") + 1] == "6GiB"
    assert args[args.index("--host") + 1] == "{host}"
    assert args[args.index("--tls-ca-file") + 1] == "/etc/dask/tls/ca.pem"
    assert args[-2:] == ["--resources", "GPU=1"]
    assert config["scheduler"]["address"].startswith("tls://")
    assert settings.scheduler_security == (
        "/etc/dask/tls/ca.pem",
        "/etc/dask/tls/tls.crt",
        "/etc/dask/tls/tls.key",
    )


def test_ssh_state_dir_defaults_to_one_folder_per_deployment(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    config = scaler_options(render_scenario("ssh", {"deployment": "lab"}, tmp_path))
    assert config["backend"]["options"]["state_dir"] == ".dask-deploy/lab"


def test_ssh_duplicate_hosts_are_refused_naming_the_key(tmp_path: Path) -> None:
    result = render_with_settings("ssh", {"hosts[1].host": "node1.example.org"}, tmp_path / "out")
    assert result.returncode == 2
    assert "hosts:" in result.stderr and "each host listed once" in result.stderr


@pytest.mark.parametrize("example", ["local", "docker"])
def test_command_defaults_to_the_chosen_example_script(
    render_scenario: RenderScenario, example: str, tmp_path: Path
) -> None:
    out = render_scenario("command", {"commands": {"example": example}}, tmp_path)
    config = scaler_options(out)
    settings = command_settings(
        BackendContext(
            config["deployment"], config["scheduler"]["address"], config["backend"]["options"]
        )
    )
    script = f"./{example}-workers.sh"
    assert (settings.start, settings.stop, settings.list) == (
        (script, "start"),
        (script, "stop"),
        (script, "list"),
    )
    assert (out / script).stat().st_mode & 0o111, "the example is executable"


def test_command_workers_register_under_the_name_start_gets(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    out = render_scenario("command", {}, tmp_path)
    for script in ("local-workers.sh", "docker-workers.sh"):
        text = (out / script).read_text()
        args = command_args(text, '$DASK_DEPLOY_SCHEDULER_ADDRESS"')
        assert args[args.index("--name") + 1] == "$name", script


def test_command_own_commands_replace_the_examples(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    values = {"commands": {"start": ["/opt/n/w.sh", "up"], "env": {"NOMAD_ADDR": "http://n:4646"}}}
    config = scaler_options(render_scenario("command", values, tmp_path))
    options = config["backend"]["options"]
    assert options["start"] == ["/opt/n/w.sh", "up"]
    assert options["stop"] == ["./local-workers.sh", "stop"]
    assert options["environment"] == {"NOMAD_ADDR": "http://n:4646"}
