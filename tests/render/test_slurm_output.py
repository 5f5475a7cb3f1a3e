"""The rendered SLURM scripts: valid bash, shellcheck-clean, and one assertion per behaviour."""

from __future__ import annotations

import posixpath
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from render_support import command_args, option

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((REPO / "tests" / "scenarios" / "slurm").glob("*-values.yaml"))
SHELLCHECK = Path(sys.executable).parent / "shellcheck"

RenderScenario = Callable[[str, "Path | dict[str, object]", Path], Path]


def scenario(name: str) -> Path:
    return REPO / "tests" / "scenarios" / "slurm" / f"{name}-values.yaml"


def directives(script: str) -> list[str]:
    """The ``#SBATCH`` options of a job script, in order."""
    return [line.split(None, 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]


def seconds(text: str) -> int:
    return int(text.removesuffix("s"))


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda path: path.name)
def test_every_rendered_script_passes_bash_n_and_shellcheck(
    render_scenario: RenderScenario, values: Path, tmp_path: Path
) -> None:
    out = render_scenario("slurm", values, tmp_path)
    scripts = sorted(out.glob("*.sh"))
    assert [script.name for script in scripts] == ["scheduler-job.sh", "worker-job.sh"]
    for script in scripts:
        syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert syntax.returncode == 0, f"{script.name}: {syntax.stderr}"
        lint = subprocess.run([str(SHELLCHECK), str(script)], capture_output=True, text=True)
        assert lint.returncode == 0, f"{script.name}:\n{lint.stdout}{lint.stderr}"


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda path: path.name)
def test_worker_is_named_after_its_job_id(
    render_scenario: RenderScenario, values: Path, tmp_path: Path
) -> None:
    worker = (render_scenario("slurm", values, tmp_path) / "worker-job.sh").read_text()
    assert option(command_args(worker, "dask worker"), "--name") == "$SLURM_JOB_ID"
    assert '--name "$SLURM_JOB_ID"' in worker  # quoted, so bash expands it


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda path: path.name)
def test_worker_retires_before_its_walltime(
    render_scenario: RenderScenario, values: Path, tmp_path: Path
) -> None:
    worker = (render_scenario("slurm", values, tmp_path) / "worker-job.sh").read_text()
    walltime = int(next(d for d in directives(worker) if d.startswith("--time=")).split("=")[1])
    args = command_args(worker, "dask worker")
    lifetime, stagger = (
        seconds(option(args, "--lifetime")),
        seconds(option(args, "--lifetime-stagger")),
    )
    assert 0 < lifetime + stagger < walltime * 60
    assert seconds(option(args, "--death-timeout")) > 0


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda path: path.name)
def test_replacement_is_requested_then_the_scaler_hands_over_before_the_backstop_lifetime(
    render_scenario: RenderScenario, values: Path, tmp_path: Path
) -> None:
    out = render_scenario("slurm", values, tmp_path)
    worker = (out / "worker-job.sh").read_text()
    walltime = int(next(d for d in directives(worker) if d.startswith("--time=")).split("=")[1])
    args = command_args(worker, "dask worker")
    earliest_self_retirement = seconds(option(args, "--lifetime")) - seconds(
        option(args, "--lifetime-stagger")
    )
    options = yaml.safe_load((out / "scaler-config.yaml").read_text())["backend"]["options"]
    replacement_requested = walltime * 60 - options["replace_before_end"]
    handover_at_the_latest = walltime * 60 - options["retire_before_end"]
    assert 0 <= replacement_requested < handover_at_the_latest < earliest_self_retirement


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda path: path.name)
def test_held_jobs_are_capped_at_maximum_plus_the_replacement_surge(
    render_scenario: RenderScenario, values: Path, tmp_path: Path
) -> None:
    out = render_scenario("slurm", values, tmp_path)
    config = yaml.safe_load((out / "scaler-config.yaml").read_text())
    rendered_values = yaml.safe_load(values.read_text()) or {}
    surge = rendered_values.get("scaler", {}).get("replacement_surge", 1)
    assert config["backend"]["options"]["max_held"] == config["policy"]["maximum"] + surge


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda path: path.name)
def test_jobs_carry_the_deployment_name_and_comment_the_backend_filters_on(
    render_scenario: RenderScenario, values: Path, tmp_path: Path
) -> None:
    out = render_scenario("slurm", values, tmp_path)
    config = yaml.safe_load((out / "scaler-config.yaml").read_text())
    deployment = config["deployment"]
    worker = directives((out / "worker-job.sh").read_text())
    assert f"--job-name={config['backend']['options']['job_name']}" in worker
    assert f"--comment=dask-deploy/{deployment}" in worker
    scheduler = directives((out / "scheduler-job.sh").read_text())
    assert f"--job-name={deployment}-scheduler" in scheduler


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda path: path.name)
def test_scheduler_job_runs_the_scaler_with_the_rendered_config(
    render_scenario: RenderScenario, values: Path, tmp_path: Path
) -> None:
    out = render_scenario("slurm", values, tmp_path)
    scheduler = (out / "scheduler-job.sh").read_text()
    scaler = command_args(scheduler, "dask_deploy.cli scale")
    assert option(scaler, "--config") == "scaler-config.yaml"
    config = yaml.safe_load((out / "scaler-config.yaml").read_text())
    assert config["backend"]["name"] == "slurm"
    options = config["backend"]["options"]
    assert options["worker_script"] == "worker-job.sh"
    assert options["job_name"] == f"{config['deployment']}-worker"
    file = option(command_args(scheduler, "dask scheduler"), "--scheduler-file")
    assert file == "$scheduler_file"
    # The scaler runs where sbatch was called: the file is in the jobs' working directory.
    (written,) = re.findall(r"^scheduler_file=(\S+)$", scheduler, re.M)
    workdir = yaml.safe_load(values.read_text()).get("slurm", {}).get("workdir")
    expected = f"{workdir}/{written}" if workdir else written
    assert config["scheduler"]["scheduler_file"] == expected


def test_defaults_scaler_config_follows_the_values(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    out = render_scenario("slurm", scenario("defaults"), tmp_path)
    config = yaml.safe_load((out / "scaler-config.yaml").read_text())
    assert config["policy"]["name"] == "adaptive"
    assert (config["policy"]["minimum"], config["policy"]["maximum"]) == (0, 10)
    assert config["loop"]["cleanup_on_exit"] is True
    # TLS by default, with the certificates the scheduler job generates (test_batch_output.py).
    assert config["scheduler"]["security"]["ca_file"] == "../dask-tls/ca.pem"


def test_tls_scenario_uses_tls_and_certificate_paths_everywhere(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    out = render_scenario("slurm", scenario("tls"), tmp_path)
    scheduler = command_args((out / "scheduler-job.sh").read_text(), "dask scheduler")
    worker = command_args((out / "worker-job.sh").read_text(), "dask worker")
    assert option(scheduler, "--protocol") == "tls"
    for args in (scheduler, worker):
        assert option(args, "--tls-ca-file") == "/shared/dask/tls/ca.pem"
        assert option(args, "--tls-cert") == "/shared/dask/tls/dask.crt"
        assert option(args, "--tls-key") == "/shared/dask/tls/dask.key"
    security = yaml.safe_load((out / "scaler-config.yaml").read_text())["scheduler"]["security"]
    assert security == {
        "ca_file": "/shared/dask/tls/ca.pem",
        "cert_file": "/shared/dask/tls/dask.crt",
        "key_file": "/shared/dask/tls/dask.key",
    }
    everything = "".join(path.read_text() for path in out.iterdir())
    assert "BEGIN CERTIFICATE" not in everything and "PRIVATE KEY" not in everything


def test_custom_scenario_writes_site_directives_resources_and_extra_args(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    out = render_scenario("slurm", scenario("custom"), tmp_path)
    worker_script = (out / "worker-job.sh").read_text()
    worker = directives(worker_script)
    for expected in (
        "--partition=compute",
        "--account=proj-42",
        "--qos=high",
        "--chdir=/scratch/climate/dask",
        "--constraint=haswell",
        "--exclusive=user",
        "--cpus-per-task=8",
        "--mem=32000M",
        "--time=240",
    ):
        assert expected in worker
    args = command_args(worker_script, "dask worker")
    assert option(args, "--nthreads") == "8"
    assert option(args, "--memory-limit") == "32000MiB"
    assert option(args, "--resources") == "GPU=1"
    assert "export OMP_NUM_THREADS=1" in worker_script
    assert "--partition=compute" in directives((out / "scheduler-job.sh").read_text())
    scheduler = command_args((out / "scheduler-job.sh").read_text(), "dask scheduler")
    assert option(scheduler, "--idle-timeout") == "3600"


def test_custom_scenario_activates_the_venv_before_python(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    out = render_scenario("slurm", scenario("custom"), tmp_path)
    for name in ("scheduler-job.sh", "worker-job.sh"):
        script = (out / name).read_text()
        activation = script.index('export PATH="$VIRTUAL_ENV/bin:$PATH"')
        assert "export VIRTUAL_ENV=/shared/envs/dask" in script
        assert activation < script.index("python3.11 -m dask")


def test_apptainer_scenario_runs_python_inside_the_image(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    out = render_scenario("slurm", scenario("apptainer"), tmp_path)
    image = "/shared/images/dask-deploy_0.1.0.sif"
    worker = command_args((out / "worker-job.sh").read_text(), "dask worker")
    assert worker[:5] == ["exec", "apptainer", "exec", "--bind", "/scratch"]
    assert worker[5:9] == [image, "python3", "-m", "dask"]
    scheduler_script = (out / "scheduler-job.sh").read_text()
    assert re.search(
        rf"^apptainer exec .* {re.escape(image)} python3 -m dask ", scheduler_script, re.M
    )
    # The scaler calls sbatch, squeue and scancel: it runs on the host, not in the image.
    scaler = command_args(scheduler_script, "dask_deploy.cli scale")
    assert "apptainer" not in scaler
    assert "/shared/envs/dask/bin/python" in scaler
    config = yaml.safe_load((out / "scaler-config.yaml").read_text())
    assert config["policy"] == {"name": "fixed", "minimum": 4, "maximum": 4, "options": {}}


SITE = {
    "slurm": {"partition": "cpu", "account": "lab", "extra_directives": ["--constraint=haswell"]},
    "scheduler": {"qos": "long", "extra_directives": ["--exclusive"]},
    "worker": {"partition": "gpu", "account": "gpu-lab", "extra_directives": ["--gres=gpu:1"]},
}


def test_worker_only_and_scheduler_only_directives_render_where_they_belong(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    out = render_scenario("slurm", SITE, tmp_path)
    scheduler = directives((out / "scheduler-job.sh").read_text())
    worker = directives((out / "worker-job.sh").read_text())
    assert {"--partition=cpu", "--account=lab", "--qos=long", "--exclusive"} <= set(scheduler)
    assert "--constraint=haswell" in scheduler and "--gres=gpu:1" not in scheduler
    assert {"--partition=gpu", "--account=gpu-lab", "--gres=gpu:1"} <= set(worker)
    assert "--constraint=haswell" in worker
    assert not {"--partition=cpu", "--account=lab", "--qos=long", "--exclusive"} & set(worker)


def test_a_worker_dashboard_binds_to_the_worker_host(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    values = {"worker": {"dashboard": True, "host": "10.1.2.3"}}
    out = render_scenario("slurm", values, tmp_path)
    worker = command_args((out / "worker-job.sh").read_text(), "dask worker")
    assert option(worker, "--dashboard-address") == "10.1.2.3:0"
    assert "--no-dashboard" not in worker


def test_no_scheduler_dashboard_when_its_port_is_null(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    out = render_scenario("slurm", {"scheduler": {"dashboard_port": None}}, tmp_path)
    scheduler = command_args((out / "scheduler-job.sh").read_text(), "dask scheduler")
    assert "--no-dashboard" in scheduler and "--dashboard-address" not in scheduler


def test_a_workdir_keeps_the_scaler_beside_its_files_and_points_it_at_the_workdir(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    """slurm.workdir moves the jobs (--chdir); the scaler still runs where sbatch was called,
    beside scaler-config.yaml and worker-job.sh, and finds the scheduler file and the generated
    TLS files in the workdir."""
    out = render_scenario("slurm", {"slurm": {"workdir": "/shared/run"}}, tmp_path)
    scheduler = (out / "scheduler-job.sh").read_text()
    assert "--chdir=/shared/run" in directives(scheduler)
    assert "rendered=${SLURM_SUBMIT_DIR:-$PWD}" in scheduler
    start = scheduler[scheduler.index("start_scaler() {") :]
    assert start.index('cd "$rendered"') < start.index("dask_deploy.cli scale")
    config = yaml.safe_load((out / "scaler-config.yaml").read_text())
    assert config["scheduler"]["scheduler_file"] == "/shared/run/dask-scheduler.json"
    # tls.directory's default is ../<deployment>-tls of the jobs' working directory.
    ca_file = config["scheduler"]["security"]["ca_file"]
    assert ca_file.startswith("/shared/run/")
    assert posixpath.normpath(ca_file) == "/shared/dask-tls/ca.pem"
    worker = command_args((out / "worker-job.sh").read_text(), "dask worker")
    assert option(worker, "--scheduler-file") == "dask-scheduler.json"  # in its own --chdir


def test_deployments_sharing_a_folder_and_a_node_use_their_own_files_and_ports(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    files, ports = set(), set()
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        out = render_scenario("slurm", {"deployment": name}, tmp_path / name)
        config = yaml.safe_load((out / "scaler-config.yaml").read_text())
        files.add(config["scheduler"]["scheduler_file"])
        ports.add(config["metrics"]["port"])
        worker = command_args((out / "worker-job.sh").read_text(), "dask worker")
        assert option(worker, "--scheduler-file") == f"{name}-scheduler.json"
    assert files == {"one-scheduler.json", "two-scheduler.json"}
    assert ports == {0}  # a free port each, logged and published with the status


def test_a_scaler_that_refuses_its_configuration_waits_for_it_to_change(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    out = render_scenario("slurm", scenario("defaults"), tmp_path)
    scheduler = (out / "scheduler-job.sh").read_text()
    loop = scheduler[scheduler.index("while true; do") :]
    assert '[ "$status" -eq 2 ]' in loop
    assert 'cksum <"$rendered/scaler-config.yaml"' in loop
    assert "delay=$((delay * 2 > 300 ? 300 : delay * 2))" in loop


def test_cleanenv_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dask_deploy.cli", "render", "--backend", "slurm",
         "--set", "python.apptainer_args={--cleanenv}", "--out", str(tmp_path / "out")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "dask-deploy render: error: python.apptainer_args[0]: got '--cleanenv', expected a "
        'string other than "--cleanenv"'
    ]
