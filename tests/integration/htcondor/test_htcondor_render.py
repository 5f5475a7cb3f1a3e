"""The rendered worker submit description is accepted by the real condor_submit (-dry-run).

Every scenario of tests/scenarios/htcondor is rendered into the pool's shared folder and given
to `condor_submit -dry-run` inside the pool, with the arguments the scaler adds, so a submit
command HTCondor does not know, or a malformed requirements expression, fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dask_deploy.backends.batch import BatchSettings
from dask_deploy.backends.htcondor import submit_command
from htcondor_support import HTCondor

pytestmark = pytest.mark.htcondor
SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios" / "htcondor"
VENV = Path(sys.executable).parent.parent


@pytest.mark.parametrize("scenario", ["defaults", "tls", "custom"])
def test_condor_submit_dry_run_accepts_the_worker_submit_description(
    htcondor: HTCondor, scenario: str
) -> None:
    folder = htcondor.share / f"render-{scenario}"
    subprocess.run(["rm", "-rf", str(folder)], check=True)
    rendered = subprocess.run(
        [
            *(str(VENV / "bin" / "dask-deploy"), "render", "--backend", "htcondor"),
            *("--values", str(SCENARIOS / f"{scenario}-values.yaml"), "--out", str(folder)),
        ],
        capture_output=True,
        text=True,
    )
    assert rendered.returncode == 0, rendered.stderr
    folder.chmod(0o777)
    settings = BatchSettings(scenario, Path("worker.sub"), f"{scenario}-worker", ())
    argv = list(submit_command(settings).argv)
    argv[argv.index("-terse")] = "-dry-run"
    argv.insert(argv.index("-dry-run") + 1, "-")  # the job ad it would submit, on stdout
    checked = subprocess.run(argv, cwd=folder, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    ad = checked.stdout
    assert f'Cmd="{folder}/worker-job.sh"' in ad
    assert 'Args="1.0"' in ad  # $(ClusterId).$(ProcId): the worker's --name
    assert f'DaskDeployment="dask-deploy/{scenario}"' in ad
    subprocess.run(["rm", "-rf", str(folder)], check=True)
