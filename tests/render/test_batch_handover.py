"""Batch workers stopped from outside hand their data over first: every batch family's worker job
loads ``dask_deploy.worker_preload`` into nanny and worker, in every scenario.

Read from the rendered job script as bash runs it: the words of its ``exec ... dask worker``
command. The end-to-end proof of what the preload does on SIGTERM (and on LSF's SIGINT, then
SIGTERM) is tests/integration/scaler/test_handover_on_sigterm.py.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from render_support import render_over_defaults

REPO = Path(__file__).resolve().parents[2]
BATCH = ("slurm", "sge", "pbs", "lsf", "htcondor")
SCENARIOS = [
    (family, path)
    for family in BATCH
    for path in sorted((REPO / "tests" / "scenarios" / family).glob("*-values.yaml"))
]


def worker_command(script: str) -> list[str]:
    """The words of the script's ``exec ... dask worker`` line and its continuation lines."""
    lines = script.splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.startswith("exec ") and "dask worker" in line
    )
    command = []
    for line in lines[start:]:
        command.append(line.removesuffix("\\"))
        if not line.endswith("\\"):
            break
    return shlex.split(" ".join(command))


@pytest.mark.parametrize(
    ("family", "values_file"), SCENARIOS, ids=[f"{f}-{p.name}" for f, p in SCENARIOS]
)
def test_the_worker_job_loads_the_handover_preload_into_nanny_and_worker(
    family: str, values_file: Path, tmp_path: Path
) -> None:
    render_over_defaults(family, yaml.safe_load(values_file.read_text()) or {}, tmp_path)
    argv = worker_command((tmp_path / "worker-job.sh").read_text())
    assert argv[argv.index("--preload-nanny") + 1] == "dask_deploy.worker_preload", argv
    assert argv[argv.index("--preload") + 1] == "dask_deploy.worker_preload", argv
