"""What every batch family's job scripts share (SLURM, Grid Engine, PBS/Torque, LSF): TLS on by
default with certificates generated into a private folder, the prologue, where the scheduler
and the workers listen, the spill folder, and the log folder outside the rendered one.

Each test runs for every family; FAMILIES says how a family spells a directive and its job id.
HTCondor's scheduler.sh (no job: it runs on the submit host) shares the TLS and log-folder parts.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from dask_deploy.render import render
from dask_deploy.values import resolve_values
from render_support import command_args, option

REPO = Path(__file__).resolve().parents[2]

RenderScenario = Callable[[str, "Path | dict[str, object]", Path], Path]


@dataclass(frozen=True)
class Family:
    backend: str
    prefix: str  # how a directive line starts
    output: str  # the directive option that names the job's output file, with its space or "="
    job_id: str  # how the output file's name spells the job id

    def directives(self, script: str) -> list[str]:
        return [
            line.removeprefix(self.prefix).strip()
            for line in script.splitlines()
            if line.startswith(self.prefix)
        ]

    def __str__(self) -> str:
        return self.backend


FAMILIES = [
    Family("slurm", "#SBATCH ", "--output=", "%j"),
    Family("sge", "#$ ", "-o ", "$JOB_ID"),
    Family("pbs", "#PBS ", "", ""),  # PBS: the scripts send their output there themselves
    Family("lsf", "#BSUB ", "-o ", "%J"),
]
EACH_FAMILY = pytest.mark.parametrize("family", FAMILIES, ids=str)
#: The script that starts the scheduler, per backend that generates its TLS files.
SCHEDULER_SCRIPTS = {
    **{f.backend: "scheduler-job.sh" for f in FAMILIES},
    "htcondor": "scheduler.sh",
}
EACH_TLS_BACKEND = pytest.mark.parametrize("backend", sorted(SCHEDULER_SCRIPTS))


def scenario(backend: str, name: str) -> Path:
    return REPO / "tests" / "scenarios" / backend / f"{name}-values.yaml"


@EACH_TLS_BACKEND
def test_tls_is_on_by_default_with_certificates_generated_into_a_private_folder(
    render_scenario: RenderScenario, backend: str, tmp_path: Path
) -> None:
    out = render_scenario(backend, scenario(backend, "defaults"), tmp_path)
    script = (out / SCHEDULER_SCRIPTS[backend]).read_text()
    scheduler = command_args(script, "dask scheduler")
    worker = command_args((out / "worker-job.sh").read_text(), "dask worker")
    assert option(scheduler, "--protocol") == "tls"
    for args in (scheduler, worker):
        assert option(args, "--tls-ca-file") == "../dask-tls/ca.pem"
        assert option(args, "--tls-cert") == "../dask-tls/tls.crt"
        assert option(args, "--tls-key") == "../dask-tls/tls.key"
    security = yaml.safe_load((out / "scaler-config.yaml").read_text())["scheduler"]["security"]
    assert security == {
        "ca_file": "../dask-tls/ca.pem",
        "cert_file": "../dask-tls/tls.crt",
        "key_file": "../dask-tls/tls.key",
    }
    # Run the script's generation lines as the job would, in its working directory.
    lines = script.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("tls_dir="))
    end = next(i for i, line in enumerate(lines) if line.startswith('chmod 0700 "$tls_dir"'))
    assert end < next(i for i, line in enumerate(lines) if "-m dask scheduler" in line)
    workdir = tmp_path / "run" / "job"
    workdir.mkdir(parents=True)
    generation = "set -euo pipefail\n" + "\n".join(lines[start : end + 1])
    for _ in range(2):  # a later run keeps the certificates of the first
        ran = subprocess.run(["bash", "-c", generation], cwd=workdir, capture_output=True)
        assert ran.returncode == 0, ran.stderr.decode()
    folder = tmp_path / "run" / "dask-tls"
    assert (folder.stat().st_mode & 0o777) == 0o700
    assert sorted(p.name for p in folder.iterdir()) == ["ca.pem", "tls.crt", "tls.key"]
    assert (folder.joinpath("tls.key").stat().st_mode & 0o777) == 0o600
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", "ca.pem", "tls.crt"], cwd=folder, capture_output=True
    )
    assert verified.returncode == 0, verified.stderr.decode()


@EACH_TLS_BACKEND
def test_given_certificates_are_used_everywhere_and_never_inlined(
    render_scenario: RenderScenario, backend: str, tmp_path: Path
) -> None:
    out = render_scenario(backend, scenario(backend, "tls"), tmp_path)
    scheduler_script = (out / SCHEDULER_SCRIPTS[backend]).read_text()
    assert "openssl" not in scheduler_script  # tls.generate: false
    scheduler = command_args(scheduler_script, "dask scheduler")
    worker = command_args((out / "worker-job.sh").read_text(), "dask worker")
    assert option(scheduler, "--protocol") == "tls"
    for args in (scheduler, worker):
        assert option(args, "--tls-ca-file") == "/shared/dask/tls/ca.pem"
        assert option(args, "--tls-cert") == "/shared/dask/tls/dask.crt"
        assert option(args, "--tls-key") == "/shared/dask/tls/dask.key"
    security = yaml.safe_load((out / "scaler-config.yaml").read_text())["scheduler"]["security"]
    assert security["ca_file"] == "/shared/dask/tls/ca.pem"
    everything = "".join(path.read_text() for path in out.iterdir())
    assert "BEGIN CERTIFICATE" not in everything and "PRIVATE KEY" not in everything


@EACH_FAMILY
def test_the_prologue_runs_first_in_both_jobs(
    render_scenario: RenderScenario, family: Family, tmp_path: Path
) -> None:
    prologue = ["module load python/3.11", "source /opt/env/bin/activate"]
    out = render_scenario(family.backend, {family.backend: {"prologue": prologue}}, tmp_path)
    for script in ("scheduler-job.sh", "worker-job.sh"):
        lines = (out / script).read_text().splitlines()
        first_python = next(i for i, line in enumerate(lines) if "-m dask" in line)
        assert [lines.index(line) < first_python for line in prologue] == [True, True], script
        first_command = next(i for i, line in enumerate(lines) if line == "set -euo pipefail")
        assert first_command < lines.index(prologue[0])


@EACH_FAMILY
def test_interfaces_spill_folder_and_no_worker_dashboard_by_default(
    render_scenario: RenderScenario, family: Family, tmp_path: Path
) -> None:
    values = {
        "scheduler": {"interface": "ib0"},
        "worker": {"interface": "ib0", "local_directory": "$TMPDIR/dask"},
    }
    out = render_scenario(family.backend, values, tmp_path)
    worker = command_args((out / "worker-job.sh").read_text(), "dask worker")
    assert option(worker, "--interface") == "ib0"
    assert option(worker, "--local-directory") == "$TMPDIR/dask"  # expanded by bash at run
    assert "--no-dashboard" in worker and "--dashboard-address" not in worker
    scheduler = command_args((out / "scheduler-job.sh").read_text(), "dask scheduler")
    assert option(scheduler, "--interface") == "ib0"
    # Nothing of the kind unless asked for.
    out = render_scenario(family.backend, {}, tmp_path)
    worker = command_args((out / "worker-job.sh").read_text(), "dask worker")
    assert "--interface" not in worker and "--local-directory" not in worker


@EACH_FAMILY
def test_a_worker_dashboard_binds_to_the_worker_host(
    render_scenario: RenderScenario, family: Family, tmp_path: Path
) -> None:
    values = {"worker": {"dashboard": True, "host": "10.1.2.3"}}
    out = render_scenario(family.backend, values, tmp_path)
    worker = command_args((out / "worker-job.sh").read_text(), "dask worker")
    assert option(worker, "--dashboard-address") == "10.1.2.3:0"
    assert "--no-dashboard" not in worker


@EACH_FAMILY
@pytest.mark.parametrize(
    ("log_directory", "expected"), [(None, "../dask-logs"), ("/scratch/me/logs", None)]
)
def test_every_job_writes_its_output_into_the_log_folder(
    render_scenario: RenderScenario,
    family: Family,
    log_directory: str | None,
    expected: str | None,
    tmp_path: Path,
) -> None:
    folder = expected or str(log_directory)
    out = render_scenario(
        family.backend, {family.backend: {"log_directory": log_directory}}, tmp_path
    )
    scheduler = (out / "scheduler-job.sh").read_text()
    worker = (out / "worker-job.sh").read_text()
    for component, script in (("scheduler", scheduler), ("worker", worker)):
        log = f"{folder}/dask-{component}-{family.job_id}.log"
        if family.output:
            assert f"{family.output}{log}" in family.directives(script)
        else:  # PBS: the scripts send their own output there, whatever the flavour does
            pbs_log = f'exec >>"$log_dir/dask-{component}-${{PBS_JOBID:-$SLURM_JOB_ID}}.log" 2>&1'
            assert f"log_dir={folder}\n" in script and pbs_log in script
    # The scheduler job makes the folder (for the workers) and gives the scaler its own log there.
    assert f"log_dir={folder}\n" in scheduler and 'mkdir -p "$log_dir"' in scheduler
    scaler_line = next(line for line in scheduler.splitlines() if "dask_deploy.cli scale" in line)
    assert '>>"$log_dir/dask-scaler-' in scaler_line and '.log" 2>&1' in scaler_line
    # Nothing a job writes lands in the rendered folder.
    assert "../dask-logs" not in (out / "scaler-config.yaml").read_text()


@pytest.mark.parametrize(
    ("log_directory", "expected"), [(None, "../dask-logs"), ("/scratch/me/logs", None)]
)
def test_htcondor_jobs_scheduler_and_scaler_write_into_the_log_folder(
    render_scenario: RenderScenario, log_directory: str | None, expected: str | None, tmp_path: Path
) -> None:
    folder = expected or str(log_directory)
    out = render_scenario("htcondor", {"htcondor": {"log_directory": log_directory}}, tmp_path)
    submit = dict(
        line.split(" = ", 1)
        for line in (out / "worker.sub").read_text().splitlines()
        if " = " in line
    )
    job_log = f"{folder}/dask-worker-$(ClusterId).$(ProcId).log"
    assert (submit["output"], submit["error"]) == (job_log, job_log)
    assert submit["log"] == f"{folder}/dask-worker.events"
    # scheduler.sh makes the folder before anything is submitted, and writes its (and the
    # scaler's) output there from its first command on.
    lines = (out / "scheduler.sh").read_text().splitlines()
    made = lines.index('mkdir -p "$log_dir"')
    assert lines[made - 1] == f"log_dir={folder}"
    assert lines[made + 1] == 'exec >>"$log_dir/dask-scheduler.log" 2>&1'
    assert made < next(i for i, line in enumerate(lines) if "dask_deploy.cli scale" in line)
    assert made < next(i for i, line in enumerate(lines) if line.startswith("tls_dir="))


@EACH_FAMILY
def test_rendering_again_after_a_run_works(family: Family, tmp_path: Path) -> None:
    """A run writes logs, certificates and the scheduler file; none of them may block a render
    into the same folder (render refuses to replace a folder holding files it did not write)."""
    resolved = resolve_values(family.backend, root=REPO / "templates")
    out = tmp_path / "deploy" / "rendered"
    render(resolved, out)
    # What a run leaves behind, with the defaults, where the scripts put it.
    scheduler = (out / "scheduler-job.sh").read_text()
    lines = scheduler.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("tls_dir="))
    end = next(i for i, line in enumerate(lines) if line.startswith('mkdir -p "$log_dir"'))
    ran = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + "\n".join(lines[start : end + 1])],
        cwd=out,
        capture_output=True,
    )
    assert ran.returncode == 0, ran.stderr.decode()
    (tmp_path / "deploy" / "dask-logs" / "dask-scheduler-7.log").write_text("a run\n")
    render(resolved, out)  # does not raise
    assert (tmp_path / "deploy" / "dask-tls" / "tls.key").exists(), "the certificates stay"
    assert (tmp_path / "deploy" / "dask-logs" / "dask-scheduler-7.log").exists()


@EACH_FAMILY
def test_every_batch_readme_says_where_the_logs_and_the_scalers_log_are(family: Family) -> None:
    readme = (REPO / "templates" / family.backend / "README.md").read_text()
    assert "log_directory" in readme
    assert "<deployment>-scaler-<job id>.log" in readme
