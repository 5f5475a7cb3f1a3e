"""A real Grid Engine for the tests (integration/sge), started by scripts/sge-up.sh.

The session fixture ``sge`` (registered in tests/conftest.py) installs Debian's gridengine
packages when missing (so a fresh CI machine works), starts sge_qmaster and sge_execd on this
host over loopback, and stops them at the end unless they were running already. When Grid Engine
cannot start, the test fails with the tail of its own messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from service_support import run_script, stop_at_end

SPOOL = Path("/var/spool/gridengine")


@dataclass(frozen=True)
class GridEngine:
    """The running test Grid Engine: where its daemons write their messages."""

    spool: Path

    def log_tails(self, lines: int = 40) -> str:
        """The end of the master's and the execution daemon's messages, to explain a failure."""
        tails = []
        for log in sorted(self.spool.glob("*/messages")) + sorted(self.spool.glob("*/*/messages")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"----- {log}\n" + "\n".join(text))
        return "\n".join(tails)


@pytest.fixture(scope="session")
def sge() -> GridEngine:
    """Start Grid Engine once per session; the run's end stops it unless it was already running."""
    started = run_script("sge-up.sh", timeout=900)
    if started.returncode != 0:
        pytest.fail(
            f"Grid Engine did not start (scripts/sge-up.sh exit {started.returncode}):\n"
            f"{started.stdout}{started.stderr}",
            pytrace=False,
        )
    if "starting sge_qmaster" in started.stderr:
        stop_at_end("sge-down.sh")  # when the whole run ends, not when this session does
    return GridEngine(SPOOL)
