"""``make demo`` runs to the end: decisions with reasons are printed and the plot is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_scales_up_and_down_and_writes_the_plot(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dask_deploy.demo", "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=240,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "scale up to" in out and "scheduler wants more workers" in out
    assert "scale down demo-" in out and "below the" in out
    assert "retired demo-" in out
    plot = tmp_path / "out" / "workers.png"
    assert f"{plot}" in out.replace("\n", "")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
