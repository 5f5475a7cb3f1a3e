"""ruff and mypy (strict on runtime/) as part of ``make test``.

They run as tests so that they run beside the rest of the suite on an xdist worker, instead of
before it while the second core waits; ``make lint`` runs the same three commands.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SOURCES = ["runtime", "tests", "bench"]


def run(*command: str) -> None:
    done = subprocess.run(
        list(command), cwd=REPO, capture_output=True, text=True, check=False, timeout=600
    )
    shown = " ".join(Path(command[0]).name if i == 0 else c for i, c in enumerate(command))
    assert done.returncode == 0, f"{shown} (exit {done.returncode}):\n{done.stdout}{done.stderr}"


@pytest.mark.lint
def test_ruff_finds_nothing() -> None:
    run(str(BIN / "ruff"), "check", *SOURCES)


@pytest.mark.lint
def test_ruff_format_leaves_every_file_as_it_is() -> None:
    run(str(BIN / "ruff"), "format", "--check", *SOURCES)


@pytest.mark.lint
def test_mypy_finds_nothing() -> None:
    run(str(BIN / "mypy"))
