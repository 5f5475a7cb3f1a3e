"""The local backend's pure parts: command builder, command-line parser, options."""

from __future__ import annotations

from pathlib import Path

import pytest

from dask_deploy import InstanceState, SettingsError
from dask_deploy.backends.local import (
    LocalOptions,
    parse_options,
    parse_worker_cmdline,
    worker_command,
)
from dask_deploy.metrics import ScalerMetrics


def test_worker_command_names_the_worker_and_marks_its_directory() -> None:
    options = LocalOptions(Path("/state"), threads=2, memory_limit="1GiB", worker_args=("--x",))
    command = worker_command(options, "tcp://127.0.0.1:8786", "dask-3")
    assert command[1:4] == ["-m", "distributed.cli.dask_worker", "tcp://127.0.0.1:8786"]
    assert command[command.index("--name") + 1] == "dask-3"
    assert command[command.index("--nthreads") + 1] == "2"
    assert command[command.index("--local-directory") + 1] == "/state/dask-3"
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--death-timeout") + 1] == "60"
    assert command[-1] == "--x"
    assert parse_worker_cmdline(command, Path("/state")) == "dask-3"


@pytest.mark.parametrize(
    "argv",
    [
        ["python", "-m", "distributed.cli.dask_worker", "tcp://x:1"],
        ["py", "--name", "dask-3", "--local-directory", "/other/dask-3"],
        ["py", "--name", "dask-3", "--local-directory", "/state/dask-4"],
        ["py", "--name"],
    ],
)
def test_other_processes_are_not_ours(argv: list[str]) -> None:
    assert parse_worker_cmdline(argv, Path("/state")) is None


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"threads": 0}, "backend.options.threads"),
        ({"worker_args": "--x"}, "backend.options.worker_args"),
        ({"state_dir": ""}, "backend.options.state_dir"),
        ({"death_timeout": 0}, "backend.options.death_timeout"),
        ({"death_timeout": "soon"}, "backend.options.death_timeout"),
        ({"colour": 1}, "backend.options.colour"),
    ],
)
def test_bad_options_name_their_key(options: dict[str, object], key: str) -> None:
    with pytest.raises(SettingsError) as raised:
        parse_options("dask", options)
    assert raised.value.key == key


def test_metrics_endpoint_serves_the_scaler_metrics() -> None:
    from urllib.request import urlopen

    metrics = ScalerMetrics()
    port = metrics.serve("127.0.0.1", 0)
    try:
        metrics.retire_failures.inc()
        with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        metrics.stop()
    for name in (
        "dask_deploy_target_workers",
        "dask_deploy_requested_workers",
        "dask_deploy_observed_workers",
        "dask_deploy_pending_workers",
        "dask_deploy_backend_errors_total",
    ):
        assert name in text
    assert "dask_deploy_retire_failures_total 1.0" in text


async def test_a_worker_the_kernel_shows_without_command_line_is_not_relaunched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after ``exec`` began, ``/proc`` shows a new worker with an empty command line.

    Seen on a loaded CI machine: a retried ``scale_up(3)`` listed one of three fresh workers
    as exited, forgot it and launched a fourth.
    """
    import dask_deploy.backends.local as local

    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\nexec sleep 60\n")
    fake_python.chmod(0o755)
    backend = local.LocalBackend(
        "d", "tcp://127.0.0.1:1", LocalOptions(tmp_path / "state", python=str(fake_python))
    )
    monkeypatch.setattr(local, "running_workers", lambda state_dir: {})
    try:
        await backend.scale_up(3)
        await backend.scale_up(3)
        instances = await backend.instances()
        assert [(i.name, i.state) for i in instances] == [
            (f"d-{n}", InstanceState.RUNNING) for n in range(3)
        ]
    finally:
        await backend.scale_down(["d-0", "d-1", "d-2"])
    assert await backend.instances() == []
