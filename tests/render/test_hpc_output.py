"""The rendered job scripts of the HPC batch families (Grid Engine, PBS/Torque, LSF): valid
bash, shellcheck-clean, and what each directive must say.

Each family differs only in its directive prefix, the variable that holds the job id and how
the walltime is spelt; FAMILIES lists them, and every test runs for each family's scenarios.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from render_support import command_args, option

REPO = Path(__file__).resolve().parents[2]
SHELLCHECK = Path(sys.executable).parent / "shellcheck"

RenderScenario = Callable[[str, "Path | dict[str, object]", Path], Path]


@dataclass(frozen=True)
class Family:
    backend: str
    prefix: str  # how a directive line starts
    job_id: str  # the variable the worker is named after
    walltime: Callable[[list[str]], int]  # seconds, from the directives

    def directives(self, script: str) -> list[str]:
        return [
            line.removeprefix(self.prefix).strip()
            for line in script.splitlines()
            if line.startswith(self.prefix)
        ]


def hms(text: str) -> int:
    hours, minutes, secs = (int(part) for part in text.split(":"))
    return hours * 3600 + minutes * 60 + secs


def sge_walltime(directives: list[str]) -> int:
    return hms(next(d for d in directives if d.startswith("-l h_rt=")).split("=", 1)[1])


def lsf_walltime(directives: list[str]) -> int:
    return hms(next(d for d in directives if d.startswith("-W ")).split()[1] + ":00")


def pbs_walltime(directives: list[str]) -> int:
    return hms(next(d for d in directives if d.startswith("-l walltime=")).split("=", 1)[1])


FAMILIES = [
    Family("sge", "#$ ", "$JOB_ID", sge_walltime),
    Family("lsf", "#BSUB ", "$LSB_JOBID", lsf_walltime),
    Family("pbs", "#PBS ", "${PBS_JOBID:-$SLURM_JOB_ID}", pbs_walltime),
]


def scenarios() -> list[tuple[Family, Path]]:
    return [
        (family, path)
        for family in FAMILIES
        for path in sorted((REPO / "tests" / "scenarios" / family.backend).glob("*-values.yaml"))
    ]


SCENARIOS = pytest.mark.parametrize(
    ("family", "values"), scenarios(), ids=lambda v: v.backend if isinstance(v, Family) else v.name
)


def seconds(text: str) -> int:
    return int(text.removesuffix("s"))


@SCENARIOS
def test_every_rendered_script_passes_bash_n_and_shellcheck(
    render_scenario: RenderScenario, family: Family, values: Path, tmp_path: Path
) -> None:
    out = render_scenario(family.backend, values, tmp_path)
    scripts = sorted(out.glob("*.sh"))
    assert [script.name for script in scripts] == ["scheduler-job.sh", "worker-job.sh"]
    for script in scripts:
        syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert syntax.returncode == 0, f"{script.name}: {syntax.stderr}"
        lint = subprocess.run([str(SHELLCHECK), str(script)], capture_output=True, text=True)
        assert lint.returncode == 0, f"{script.name}:\n{lint.stdout}{lint.stderr}"


@SCENARIOS
def test_worker_is_named_after_its_job_id_and_retires_before_its_walltime(
    render_scenario: RenderScenario, family: Family, values: Path, tmp_path: Path
) -> None:
    out = render_scenario(family.backend, values, tmp_path)
    worker = (out / "worker-job.sh").read_text()
    assert f'--name "{family.job_id}"' in worker  # quoted, so bash expands it
    args = command_args(worker, "dask worker")
    walltime = family.walltime(family.directives(worker))
    lifetime, stagger = (
        seconds(option(args, "--lifetime")),
        seconds(option(args, "--lifetime-stagger")),
    )
    assert 0 < lifetime + stagger < walltime
    # The scaler asks for the replacement, then hands over, before the backstop lifetime.
    config = yaml.safe_load((out / "scaler-config.yaml").read_text())
    assert config["backend"]["name"] == family.backend
    options = config["backend"]["options"]
    replacement_requested = walltime - options["replace_before_end"]
    handover_at_the_latest = walltime - options["retire_before_end"]
    assert 0 <= replacement_requested < handover_at_the_latest < lifetime - stagger
    # Jobs held at once stay within maximum + replacement_surge.
    scaler_values = (yaml.safe_load(values.read_text()) or {}).get("scaler", {})
    surge = scaler_values.get("replacement_surge", 1)
    assert options["max_held"] == config["policy"]["maximum"] + surge


@SCENARIOS
def test_jobs_carry_the_names_the_backend_filters_on(
    render_scenario: RenderScenario, family: Family, values: Path, tmp_path: Path
) -> None:
    out = render_scenario(family.backend, values, tmp_path)
    config = yaml.safe_load((out / "scaler-config.yaml").read_text())
    deployment = config["deployment"]
    assert config["backend"]["options"]["job_name"] == f"{deployment}-worker"
    worker = " ".join(family.directives((out / "worker-job.sh").read_text()))
    scheduler = " ".join(family.directives((out / "scheduler-job.sh").read_text()))
    assert f"{deployment}-worker" in worker
    assert f"{deployment}-scheduler" in scheduler


def test_sge_worker_only_directives_stay_off_the_scheduler_job(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    family = FAMILIES[0]
    out = render_scenario(
        "sge", REPO / "tests" / "scenarios" / "sge" / "custom-values.yaml", tmp_path
    )
    worker = family.directives((out / "worker-job.sh").read_text())
    scheduler = family.directives((out / "scheduler-job.sh").read_text())
    assert {"-q gpu.q", "-l gpu=1", "-R y", "-pe threads 8"} <= set(worker)
    assert {"-q service.q", "-l hostname=login*", "-pe threads 2"} <= set(scheduler)
    assert not {"-q gpu.q", "-l gpu=1", "-R y"} & set(scheduler)
    assert "-l hostname=login*" not in worker
    # Memory is requested per slot: 32000 MiB over 8 slots.
    assert "-l h_vmem=4000M" in worker
    assert {"-P physics", "-A proj-42", "-wd /scratch/climate/dask"} <= set(worker) & set(scheduler)
    # qdel warns the scheduler job (-notify) so its scaler deletes the workers first.
    assert "-notify" in scheduler and "-notify" not in worker


def test_lsf_worker_only_directives_stay_off_the_scheduler_job(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    family = FAMILIES[1]
    custom = REPO / "tests" / "scenarios" / "lsf" / "custom-values.yaml"
    out = render_scenario("lsf", custom, tmp_path)
    worker = family.directives((out / "worker-job.sh").read_text())
    scheduler = family.directives((out / "scheduler-job.sh").read_text())
    assert {"-q gpu", '-gpu "num=1"', "-x", "-n 8", "-M 32000MB", "-W 4:00"} <= set(worker)
    assert {"-q service", "-m login01", "-n 2", "-M 8192MB", "-W 12:00"} <= set(scheduler)
    assert not {"-q gpu", '-gpu "num=1"', "-x"} & set(scheduler)
    assert '-R "span[hosts=1]"' in worker, "a worker's slots are on one host"
    assert {"-P physics", "-cwd /scratch/climate/dask", "-Jd dask-deploy/climate"} <= set(worker)


def test_pbs_worker_only_directives_stay_off_the_scheduler_job(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    family = FAMILIES[2]
    custom = REPO / "tests" / "scenarios" / "pbs" / "custom-values.yaml"
    out = render_scenario("pbs", custom, tmp_path)
    worker = family.directives((out / "worker-job.sh").read_text())
    scheduler = family.directives((out / "scheduler-job.sh").read_text())
    assert {"-q gpu", "-l ngpus=1", "-l select=1:ncpus=8:mem=32000mb"} <= set(worker)
    assert {"-q service", "-l place=excl", "-l select=1:ncpus=2:mem=8192mb"} <= set(scheduler)
    assert not {"-q gpu", "-l ngpus=1", "-W sandbox=PRIVATE"} & set(scheduler)
    assert "-A physics" in worker and "-A physics" in scheduler
    # PBS starts a job in the home folder: both scripts go to the working directory first.
    for script in ("worker-job.sh", "scheduler-job.sh"):
        assert "\ncd /scratch/climate/dask\n" in (out / script).read_text()


def test_pbs_torque_syntax_by_default(render_scenario: RenderScenario, tmp_path: Path) -> None:
    out = render_scenario("pbs", {}, tmp_path)
    worker = FAMILIES[2].directives((out / "worker-job.sh").read_text())
    assert {"-l nodes=1:ppn=2", "-l mem=4096mb", "-j oe"} <= set(worker)
    assert 'cd "${PBS_O_WORKDIR:-$PWD}"' in (out / "worker-job.sh").read_text()
