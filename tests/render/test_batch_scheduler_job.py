"""The scheduler job of every batch family (SLURM, Grid Engine, PBS/Torque, LSF, and HTCondor's
scheduler.sh), which shares its code in templates/_common/_batch.j2: deployments on one node or in
one folder get their own scheduler file and metrics port, the scaler runs beside its rendered files
whatever the work folder, and a scaler that exits is started again without spinning.

The last tests run the rendered script itself, as the batch system would start it (its job id,
its submission folder, its working directory), with a stand-in ``python`` on the values'
``python.executable`` and a stand-in ``sleep`` first on PATH that records how long the script
asked to wait and returns at once.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from process_support import wait_for
from render_support import command_args, option

RenderScenario = Callable[[str, "Path | dict[str, object]", Path], Path]


@dataclass(frozen=True)
class Family:
    backend: str
    script: str  # the scheduler's script
    job_env: tuple[str, ...]  # variables the batch system sets: job id, then submission folder
    submit: str  # how the README submits the script

    def __str__(self) -> str:
        return self.backend


FAMILIES = [
    Family("slurm", "scheduler-job.sh", ("SLURM_JOB_ID", "SLURM_SUBMIT_DIR"), "sbatch"),
    Family("sge", "scheduler-job.sh", ("JOB_ID", "SGE_O_WORKDIR"), "qsub"),
    Family("pbs", "scheduler-job.sh", ("PBS_JOBID", "PBS_O_WORKDIR"), "qsub"),
    Family("lsf", "scheduler-job.sh", ("LSB_JOBID", "LS_SUBCWD"), "bsub"),
    Family("htcondor", "scheduler.sh", (), "./scheduler.sh"),
]
JOBS = [family for family in FAMILIES if family.backend != "htcondor"]
EACH = pytest.mark.parametrize("family", FAMILIES, ids=str)
EACH_JOB = pytest.mark.parametrize("family", JOBS, ids=str)


def assignment(script: str, name: str) -> str:
    """The value of the script's one ``name=...`` line, as bash reads it."""
    (line,) = [line for line in script.splitlines() if line.startswith(f"{name}=")]
    return shlex.split(line.removeprefix(f"{name}="))[0]


@EACH
def test_two_deployments_rendered_side_by_side_share_neither_file_nor_port(
    render_scenario: RenderScenario, family: Family, tmp_path: Path
) -> None:
    files, ports = set(), set()
    for name in ("one", "two"):
        out = render_scenario(family.backend, {"deployment": name}, tmp_path)
        config = yaml.safe_load((out / "scaler-config.yaml").read_text())
        files.add(config["scheduler"]["scheduler_file"])
        ports.add(config["metrics"]["port"])
        # The scheduler writes the file the workers and the scaler read.
        script = (out / family.script).read_text()
        assert assignment(script, "scheduler_file") == f"{name}-scheduler.json"
        assert option(command_args(script, "-m dask scheduler"), "--scheduler-file") == (
            "$scheduler_file"
        )
        worker = command_args((out / "worker-job.sh").read_text(), "-m dask worker")
        assert option(worker, "--scheduler-file") == f"{name}-scheduler.json"
        assert f'Client(scheduler_file="{name}-scheduler.json")' in script
    assert files == {"one-scheduler.json", "two-scheduler.json"}
    # Port 0: a free port each, which the scaler logs and publishes with its status.
    assert ports == {0}


@EACH
def test_the_defaults_say_what_the_templates_do(family: Family) -> None:
    from dask_deploy.values import resolve_values

    values = resolve_values(family.backend, root=Path(__file__).parents[2] / "templates").values
    assert values["scheduler"]["scheduler_file"] is None
    assert values["scaler"]["metrics_port"] == 0
    readme = (Path(__file__).parents[2] / "templates" / family.backend / "README.md").read_text()
    assert "scheduler.json" not in readme.replace("-scheduler.json", "")


@EACH_JOB
def test_a_workdir_moves_the_jobs_and_the_scaler_stays_beside_its_files(
    render_scenario: RenderScenario, family: Family, tmp_path: Path
) -> None:
    """<family>.workdir moves the jobs; the scaler still runs where the job was submitted, beside
    scaler-config.yaml and worker-job.sh, and its configuration points into the workdir."""
    out = render_scenario(family.backend, {family.backend: {"workdir": "/shared/run"}}, tmp_path)
    script = (out / "scheduler-job.sh").read_text()
    start = script[script.index("start_scaler() {") :]
    assert start.index('cd "$rendered"') < start.index("dask_deploy.cli scale")
    config = yaml.safe_load((out / "scaler-config.yaml").read_text())
    assert config["scheduler"]["scheduler_file"] == "/shared/run/dask-scheduler.json"
    # tls.directory's default is ../<deployment>-tls of the jobs' working directory.
    ca_file = config["scheduler"]["security"]["ca_file"]
    assert posixpath.normpath(ca_file) == "/shared/dask-tls/ca.pem"
    worker = command_args((out / "worker-job.sh").read_text(), "-m dask worker")
    assert option(worker, "--scheduler-file") == "dask-scheduler.json"  # in the workdir


@pytest.mark.parametrize("family", [f for f in JOBS if f.backend != "slurm"], ids=str)
def test_with_an_image_the_scaler_runs_on_the_host(
    render_scenario: RenderScenario, family: Family, tmp_path: Path
) -> None:
    """The scaler calls the batch system's commands, which an image does not hold."""
    python = {
        "apptainer_image": "/shared/images/dask.sif",
        "host_executable": "/shared/envs/dask/bin/python",
    }
    out = render_scenario(family.backend, {"python": python}, tmp_path)
    script = (out / "scheduler-job.sh").read_text()
    assert command_args(script, "-m dask scheduler")[:2] == ["apptainer", "exec"]
    scaler = command_args(script, "dask_deploy.cli scale")
    assert scaler[:2] == ["exec", "/shared/envs/dask/bin/python"]


@pytest.mark.parametrize("family", [f for f in JOBS if f.backend != "slurm"], ids=str)
def test_cleanenv_is_refused(family: Family, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dask_deploy.cli", "render", "--backend", family.backend,
         "--set", "python.apptainer_args={--cleanenv}", "--out", str(tmp_path / "out")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "dask-deploy render: error: python.apptainer_args[0]: got '--cleanenv', expected a "
        'string other than "--cleanenv"'
    ]


@EACH
def test_an_interpreter_named_like_an_option_is_refused(family: Family, tmp_path: Path) -> None:
    """bash would read ``-H_Ft -m dask scheduler`` as an option (the fuzz tier's shellcheck
    sample found it, SC2215)."""
    result = subprocess.run(
        [sys.executable, "-m", "dask_deploy.cli", "render", "--backend", family.backend,
         "--set", "python.executable=-H_Ft", "--out", str(tmp_path / "out")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith(
        "dask-deploy render: error: python.executable: got '-H_Ft', expected a string matching"
    )


@EACH_JOB
@pytest.mark.parametrize("folder", ["$TMPDIRx", "$TMPDIR_x/dask", "/scratch/$USERs"])
def test_a_spill_folder_bash_would_read_as_another_variable_is_refused(
    family: Family, folder: str, tmp_path: Path
) -> None:
    """``$TMPDIRx`` is the variable TMPDIRx to bash, not $TMPDIR then "x" (the fuzz tier's
    shellcheck sample found ``$EOTQ8n``, SC2154); ``${TMPDIR}x`` says it."""
    result = subprocess.run(
        [sys.executable, "-m", "dask_deploy.cli", "render", "--backend", family.backend,
         "--set", f"worker.local_directory={folder}", "--out", str(tmp_path / "out")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        f"dask-deploy render: error: worker.local_directory: got {folder!r}, expected a string"
    )


# ------------------------------------------------------------------- running the rendered script

STAND_IN_PYTHON = """#!/bin/bash
# "-m dask scheduler ... --scheduler-file F": writes F and runs until stopped.
# "-m dask_deploy.cli scale ...": exits with the next status of $STAND_IN/statuses, or runs until
# stopped once they are used up. Each call is a line of $STAND_IN/calls, with its folder.
calls="$STAND_IN/calls"
if [ "$2" = dask ]; then
  while [ "$1" != --scheduler-file ]; do shift; done
  # The call first: the job script starts the scaler as soon as the file is there.
  echo "scheduler $PWD $2" >>"$calls"
  printf '{"address": "tcp://127.0.0.1:1"}' >"$2"
  exec {sleep} 600
fi
runs=$(grep -c '^scaler ' "$calls")
echo "scaler $PWD" >>"$calls"
status=$(sed -n "$((runs + 1))p" "$STAND_IN/statuses")
[ -n "$status" ] && exit "$status"
exec {sleep} 600
"""

STAND_IN_SLEEP = """#!/bin/bash
# Records how long the script asked to wait, and waits a moment only.
echo "$1" >>"$STAND_IN/sleeps"
exec {sleep} 0.05
"""


@dataclass
class RunningJob:
    family: Family
    rendered: Path
    workdir: Path
    stand_in: Path
    process: subprocess.Popen[bytes]
    output: Path

    def calls(self, kind: str) -> list[list[str]]:
        lines = (self.stand_in / "calls").read_text().splitlines()
        return [line.split()[1:] for line in lines if line.startswith(f"{kind} ")]

    def sleeps(self) -> list[str]:
        path = self.stand_in / "sleeps"
        return path.read_text().split() if path.exists() else []

    def says(self) -> str:
        """What the script printed: its output, or its job log (PBS sends it there itself)."""
        logs = sorted(self.workdir.parent.glob("*-logs/*.log"))
        return "".join(path.read_text() for path in [self.output, *logs])


@contextmanager
def running(
    render_scenario: RenderScenario, family: Family, tmp_path: Path, statuses: list[int]
) -> Iterator[RunningJob]:
    """Render with a stand-in python, start the scheduler job as its batch system would (in its
    workdir, with its job id and submission folder), stop it with SIGTERM at the end."""
    stand_in = tmp_path / "stand-in"
    (stand_in / "bin").mkdir(parents=True)
    real_sleep = shutil.which("sleep")
    assert real_sleep is not None
    for path, text in (
        (stand_in / "python", STAND_IN_PYTHON),
        (stand_in / "bin" / "sleep", STAND_IN_SLEEP),
    ):
        path.write_text(text.replace("{sleep}", real_sleep))
        path.chmod(0o755)
    (stand_in / "calls").write_text("")
    (stand_in / "statuses").write_text("".join(f"{status}\n" for status in statuses))
    values: dict[str, Any] = {
        "deployment": "dask",
        "python": {"executable": str(stand_in / "python")},
        "tls": {"enabled": False},
    }
    if family.backend != "htcondor":
        # Relative, as users write it: against the folder the job is submitted from.
        values[family.backend] = {"workdir": "../run"}
    rendered = render_scenario(family.backend, values, tmp_path)
    workdir = rendered.parent / "run" if family.backend != "htcondor" else rendered
    workdir.mkdir(exist_ok=True)
    env = {**os.environ, "STAND_IN": str(stand_in)}
    env["PATH"] = f"{stand_in / 'bin'}{os.pathsep}{env['PATH']}"
    env.update(zip(family.job_env, ("7", str(rendered)), strict=False))  # none for HTCondor
    # The batch system starts the job in its working directory; PBS in the home folder, and
    # the script goes to its folders itself.
    cwd = tmp_path if family.backend == "pbs" else workdir
    output = tmp_path / "job-output.log"
    with open(output, "wb") as sink:
        process = subprocess.Popen(
            ["bash", str(rendered / family.script)],
            cwd=cwd,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    job = RunningJob(family, rendered, workdir, stand_in, process, output)
    try:
        yield job
        # scancel, qdel, bkill or Ctrl-C: the script stops the scaler, then the scheduler.
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 143, job.says()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@EACH
def test_the_scaler_runs_beside_its_files_and_the_scheduler_in_the_workdir(
    render_scenario: RenderScenario, family: Family, tmp_path: Path
) -> None:
    with running(render_scenario, family, tmp_path, statuses=[]) as job:
        wait_for(f"the scaler starts\n{job.says()}", lambda: job.calls("scaler"), 60)
        assert job.calls("scheduler") == [[str(job.workdir), "dask-scheduler.json"]]
        assert job.calls("scaler") == [[str(job.rendered)]]
        # What the scaler reads, from where it runs, is the file the scheduler wrote.
        config = yaml.safe_load((job.rendered / "scaler-config.yaml").read_text())
        scheduler_file = job.rendered / config["scheduler"]["scheduler_file"]
        assert scheduler_file.resolve() == job.workdir / "dask-scheduler.json"
        assert (job.rendered / config["backend"]["options"]["worker_script"]).exists()


@EACH
def test_a_scaler_that_refuses_its_configuration_waits_for_the_file_to_change(
    render_scenario: RenderScenario, family: Family, tmp_path: Path
) -> None:
    with running(render_scenario, family, tmp_path, statuses=[2]) as job:
        wait_for(
            f"the script says the scaler refused its configuration\n{job.says()}",
            lambda: "refused its configuration" in job.says(),
            60,
        )
        # It keeps looking at the file, and does not start the scaler again meanwhile.
        looked = len(job.sleeps())
        wait_for("the script looks again", lambda: len(job.sleeps()) >= looked + 5, 60)
        assert len(job.calls("scaler")) == 1
        config = job.rendered / "scaler-config.yaml"
        config.write_text(config.read_text() + "# fixed\n")
        wait_for("the scaler starts again", lambda: len(job.calls("scaler")) == 2, 60)
        assert job.says().count("refused its configuration") == 1
        assert "starting it again" not in job.says()


@EACH
def test_a_scaler_that_crashes_again_waits_twice_as_long_each_time_up_to_five_minutes(
    render_scenario: RenderScenario, family: Family, tmp_path: Path
) -> None:
    with running(render_scenario, family, tmp_path, statuses=[1] * 8) as job:
        wait_for(
            f"the scaler runs a ninth time\n{job.says()}",
            lambda: len(job.calls("scaler")) == 9,
            60,
        )
        delays = ["5", "10", "20", "40", "80", "160", "300", "300"]
        waits = [s for s in job.sleeps() if s != "1"]  # not the wait for the scheduler file
        assert waits == delays
        said = [line for line in job.says().splitlines() if "starting it again" in line]
        assert said == [
            f"the scaler exited with status 1; starting it again in {delay} s" for delay in delays
        ]
