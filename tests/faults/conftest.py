"""Fault suite: the tally printed at the end of the run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Reuse the scaler integration harness (`dask-deploy scale` subprocess, local workers).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration" / "scaler"))

from tally import TALLY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the fault tally: faults injected, keys lost, instances left, worst recovery."""
    if not TALLY.faults:
        return
    terminalreporter.section("fault tally")
    for line in TALLY.lines():
        terminalreporter.write_line(line)
