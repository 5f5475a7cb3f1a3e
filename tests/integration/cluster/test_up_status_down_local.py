"""``dask-deploy up / status / down`` on the local backend, as a user types them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cluster_support import processes_mentioning, state_root
from process_support import wait_for

__all__ = ["state_root"]  # the fixture
pytestmark = pytest.mark.integration


def dask_deploy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dask_deploy.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def not_json(constant: str) -> None:
    raise AssertionError(f"{constant} is not JSON")


def test_up_status_down_round_trip(state_root: Path) -> None:
    up = dask_deploy("up", "local", "--name", "cli", "--set", "scaler.interval=0.5",
                     "--set", "scaler.minimum=1")  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert "deployment cli is up on local" in up.stdout
    address = next(line.split(": ")[1] for line in up.stdout.splitlines() if "scheduler:" in line)

    def status() -> dict[str, object]:
        shown = dask_deploy("status", "cli", "-o", "json")
        assert shown.returncode == 0, shown.stderr
        parsed: dict[str, object] = json.loads(shown.stdout, parse_constant=not_json)
        return parsed

    seen = wait_for("one worker (the minimum) is up", lambda: (s := status())["workers"] and s)
    assert seen["name"] == "cli" and seen["backend"] == "local"
    assert seen["scheduler"] == {"address": address, "reachable": True, "error": None}
    assert [w["name"] for w in seen["workers"]] == ["cli-0"]  # type: ignore[attr-defined]
    assert seen["instances"] == [{"name": "cli-0", "state": "running"}]
    scaler = seen["scaler"]
    assert isinstance(scaler, dict)
    assert scaler["policy"] == {"name": "adaptive", "minimum": 1, "maximum": 4, "options": {}}
    assert scaler["decisions"][0]["line"].startswith("scale up to 1")
    # Exactly the fields docs/python-api.md documents.
    assert set(seen) == {"name", "backend", "folder", "created_at", "scheduler", "workers",
                         "scaler", "instances", "instances_error"}  # fmt: skip
    assert set(scaler) == {"updated_at", "interval", "policy", "applied_request",
                           "refused_request", "target", "requested", "observed", "pending",
                           "instances", "metrics", "decisions"}  # fmt: skip
    assert set(scaler["decisions"][0]) == {"time", "kind", "line"}
    assert set(seen["workers"][0]) == {"name", "address", "status"}  # type: ignore[index]

    text = dask_deploy("status", "cli")
    assert text.returncode == 0, text.stderr
    assert f"scheduler   {address} (reachable)" in text.stdout
    assert "workers     1: cli-0" in text.stdout
    assert "scale up to 1" in text.stdout

    again = dask_deploy("up", "local", "--name", "cli")
    assert again.returncode == 2
    assert "name: got 'cli', expected a name not in use (run `dask-deploy down cli` first)" in (
        again.stderr
    )

    folder = str(state_root / "cli")
    down = dask_deploy("down", "cli")
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip() == "deployment cli is down"
    assert processes_mentioning(folder) == []
    gone = dask_deploy("status", "cli")
    assert gone.returncode == 2
    assert gone.stderr.strip() == (
        "dask-deploy status: error: name: got 'cli', expected a deployment started on this "
        "machine (known: none)"
    )


def test_up_refuses_bad_values_in_one_line_before_starting_anything(state_root: Path) -> None:
    bad = dask_deploy("up", "local", "--set", "scaler.maximum=-1")
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "dask-deploy up: error: scaler.maximum: got -1, expected an integer >= 0"
    )
    typo = dask_deploy("up", "local", "--set", "scaler.maximun=3")
    assert typo.returncode == 2
    assert "scaler.maximun: got 3, expected one of" in typo.stderr
    assert not state_root.exists() or not any(state_root.iterdir())
