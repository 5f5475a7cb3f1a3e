"""Two deployments on one node, with their jobs in one shared working directory (slurm.workdir).

Each scaler runs beside its own rendered files while its jobs run in the workdir; each
deployment has its own scheduler file there and its scaler's metrics get a free port each
(metrics_port 0), so neither loops on "Address already in use" or on a configuration it cannot
find.
"""

from __future__ import annotations

import re
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest
from distributed import Client
from slurm_deployment import deployment_values, submitted, worker_names

from batch_support import folder_logs
from process_support import wait_for
from slurm_support import Slurm

pytestmark = pytest.mark.slurm


def test_two_deployments_share_a_workdir_and_a_node(slurm: Slurm, tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    workdir.mkdir()
    names = [f"share{i}-{uuid.uuid4().hex[:4]}" for i in (1, 2)]

    # Each deployment's jobs and scaler write into its log folder, ../<deployment>-logs of the
    # workdir (slurm.log_directory's default).
    log_folders = {name: tmp_path / f"{name}-logs" for name in names}

    def logs() -> str:
        return folder_logs(log_folders.values())

    with ExitStack() as stack:
        for name in names:
            values = deployment_values(
                name,
                {"policy": "fixed", "minimum": 1, "maximum": 1, "metrics_port": 0},
                slurm={"workdir": str(workdir)},
            )
            stack.enter_context(submitted(slurm, values, tmp_path / name))
        for name in names:
            scheduler_file = workdir / f"{name}-scheduler.json"
            wait_for(f"{scheduler_file} is written\n{logs()}", scheduler_file.exists, 90)
            with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
                wait_for(f"{name} gets its worker\n{logs()}", lambda c=client: worker_names(c), 120)
                assert client.submit(sum, [1, 2]).result(timeout=60) == 3
        ports = set()
        for name in names:
            (job_log,) = log_folders[name].glob(f"{name}-scheduler-*.log")
            (scaler_log,) = log_folders[name].glob(f"{name}-scaler-*.log")
            text = job_log.read_text(errors="replace") + scaler_log.read_text(errors="replace")
            assert "starting it again" not in text, text
            assert "Address already in use" not in text, text
            ports.update(re.findall(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", text))
        assert len(ports) == 2, logs()


def test_a_scaler_refusing_its_configuration_waits_for_it_to_change(
    slurm: Slurm, tmp_path: Path
) -> None:
    """No restart loop: a scaler-config.yaml the scaler refuses (exit status 2) is said once in
    the job's log; the scaler starts again once the file is fixed, and workers come."""
    name = f"broken-{uuid.uuid4().hex[:4]}"
    values = deployment_values(name, {"policy": "fixed", "minimum": 1, "maximum": 1})
    folder = tmp_path / "rendered"
    good: list[str] = []

    def break_config(rendered: Path) -> None:
        config = rendered / "scaler-config.yaml"
        good.append(config.read_text())
        config.write_text(good[0].replace("maximum: 1", "maximum: -1"))

    with submitted(slurm, values, folder, edit=break_config) as deployment:
        # The job's output and the scaler's own log are in the log folder (slurm.log_directory).
        def job_log() -> str:
            return "\n".join(
                p.read_text(errors="replace")
                for p in deployment.log_folder.glob(f"{name}-scheduler-*.log")
            )

        def scaler_log() -> str:
            return "\n".join(
                p.read_text(errors="replace")
                for p in deployment.log_folder.glob(f"{name}-scaler-*.log")
            )

        wait_for(
            f"the job says the scaler refused its configuration\n{deployment.logs()}",
            lambda: "refused its configuration" in job_log(),
            90,
        )
        assert "policy.maximum: got -1" in scaler_log()
        (folder / "scaler-config.yaml").write_text(good[0])
        with Client(scheduler_file=str(deployment.scheduler_file), timeout="30s") as client:
            wait_for(
                f"the scaler starts again and a worker comes\n{deployment.logs()}",
                lambda: worker_names(client),
                120,
            )
        assert job_log().count("refused its configuration") == 1
        assert "starting it again" not in job_log()
