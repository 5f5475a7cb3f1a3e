"""scaler.yaml loading: defaults, overrides, the environment variable and errors naming keys."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dask_deploy import SettingsError
from dask_deploy.config import ENV_VAR, load_config
from process_support import free_port

FULL = """
deployment: dask
scheduler:
  address: tls://127.0.0.1:8786
  security: {ca_file: /ca.pem, cert_file: /tls.crt, key_file: /tls.key}
policy: {name: adaptive, minimum: 1, maximum: 4, options: {growth_factor: 3}}
loop: {interval: 0.5, startup_timeout: 120, cleanup_on_exit: true}
metrics: {host: 127.0.0.1, port: 9191}
backend: {name: local, options: {threads: 2}}
"""

MINIMAL = {"scheduler": {"address": "tcp://127.0.0.1:8786"}, "backend": {"name": "fake"}}


def test_full_file_loads_into_frozen_settings(tmp_path: Path) -> None:
    path = tmp_path / "scaler.yaml"
    path.write_text(FULL)
    config = load_config(path, environ={})
    assert config.scheduler.security is not None
    assert config.scheduler.security.ca_file == "/ca.pem"
    assert (config.policy.minimum, config.policy.maximum) == (1, 4)
    assert config.policy.options == {"growth_factor": 3}
    assert config.loop.cleanup_on_exit and config.loop.interval == 0.5
    assert config.metrics is not None and config.metrics.port == 9191
    assert config.backend.options == {"threads": 2}
    with pytest.raises(AttributeError):
        config.loop.interval = 2  # type: ignore[misc]


def test_environment_variable_is_read_without_config() -> None:
    config = load_config(None, environ={ENV_VAR: yaml.safe_dump(MINIMAL)})
    assert config.backend.name == "fake"
    assert config.policy.name == "adaptive" and config.loop.startup_timeout == 300
    assert config.metrics is None


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "scaler.yaml"
    path.write_text(FULL)
    config = load_config(path, {"policy.maximum": 9, "loop.interval": 2.0}, environ={})
    assert config.policy.maximum == 9 and config.loop.interval == 2.0


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"policy.maximum": -1}, "policy.maximum"),
        ({"policy.minimum": 5, "policy.maximum": 2}, "policy.maximum"),
        ({"policy.minimum": True}, "policy.minimum"),
        ({"loop.interval": 0}, "loop.interval"),
        ({"loop.startup_timeout": "soon"}, "loop.startup_timeout"),
        ({"loop.cleanup_on_exit": "yes"}, "loop.cleanup_on_exit"),
        ({"loop.speed": 1}, "loop.speed"),
        ({"scheduler.address": "http://127.0.0.1:8786"}, "scheduler.address"),
        ({"scheduler.scheduler_file": "/s.json"}, "scheduler.address"),
        ({"deployment": "Bad_Name"}, "deployment"),
        ({"metrics.port": 70000}, "metrics.port"),
        ({"backend.name": ""}, "backend.name"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_settings_name_their_key(change: dict[str, object], key: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_config(
            None,
            {**{"scheduler.address": "tcp://127.0.0.1:8786"}, **change},
            environ={ENV_VAR: yaml.safe_dump({"backend": {"name": "fake"}})},
        )
    assert raised.value.key == key


def test_cli_exits_2_naming_the_key_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "scaler.yaml"
    path.write_text(FULL)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dask_deploy.cli",
            "scale",
            "--config",
            str(path),
            "--maximum",
            "-1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "policy.maximum: got -1" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_unknown_policy_option_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "scaler.yaml"
    path.write_text(FULL.replace("growth_factor: 3", "growth_factor: 0.5"))
    result = subprocess.run(
        [sys.executable, "-m", "dask_deploy.cli", "scale", "--config", str(path), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "policy.options.growth_factor" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_misspelt_key_in_scaler_yaml_is_one_line_naming_key_value_and_allowed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "scaler.yaml"
    path.write_text(FULL.replace("cleanup_on_exit: true", "cleanup_on_exti: true"))
    result = subprocess.run(
        [sys.executable, "-m", "dask_deploy.cli", "scale", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "loop.cleanup_on_exti: got True" in line
    assert "did you mean cleanup_on_exit?" in line


def test_scaler_yaml_errors_read_like_values_file_errors() -> None:
    with pytest.raises(SettingsError) as raised:
        load_config(None, {**flat(MINIMAL), "loop.interval": "fast"}, environ={})
    assert str(raised.value) == "loop.interval: got 'fast', expected a number"
    with pytest.raises(SettingsError) as raised:
        load_config(None, {**flat(MINIMAL), "metrics.port": 70000}, environ={})
    assert str(raised.value) == "metrics.port: got 70000, expected an integer >= 0 and <= 65535"


def test_the_documented_example_passes_the_schema() -> None:
    text = Path(__file__).parents[2].joinpath("docs", "scaler-config.md").read_text()
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = load_config(None, {}, environ={ENV_VAR: example})
    assert config.backend.name == "marathon"


def flat(mapping: dict[str, dict[str, str]]) -> dict[str, object]:
    return {
        f"{section}.{key}": value
        for section, keys in mapping.items()
        for key, value in keys.items()
    }


def test_the_scale_command_overrides_the_metrics_host(tmp_path: Path) -> None:
    """``--metrics-host`` (the Marathon scaler passes its task's "$HOST") is where the metrics
    listen: the scaler says so as it starts, before it reaches any scheduler."""
    port = free_port()
    path = tmp_path / "scaler.yaml"
    config = {**MINIMAL, "scheduler": {"address": "tcp://127.0.0.1:1"}}
    path.write_text(yaml.safe_dump({**config, "metrics": {"host": "127.0.0.1", "port": 9191}}))
    log = tmp_path / "scaler.log"
    argv = [sys.executable, "-m", "dask_deploy.cli", "scale", "--config", str(path)]
    argv += ["--dry-run", "--metrics-host", "127.0.0.3", "--metrics-port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while f"metrics on http://127.0.0.3:{port}/metrics" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(30)
