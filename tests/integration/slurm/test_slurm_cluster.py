"""DeployCluster and up/status/down on the project's real SLURM.

The scheduler job is submitted with sbatch exactly as templates/slurm/README.md says; the
scaler inside it submits worker jobs named by their job ids.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from distributed import Client
from slurm_deployment import deployment_values, squeue

from cluster_support import PublishedDecisions, state_root
from dask_deploy import DeployCluster
from process_support import wait_for
from slurm_support import Slurm

__all__ = ["state_root"]  # the fixture
pytestmark = pytest.mark.slurm


def values(name: str) -> dict[str, object]:
    scaler = {"minimum": 0, "maximum": 2, "scale_down_window": 2, "startup_timeout": 120}
    chosen = deployment_values(name, scaler)
    chosen.pop("deployment")  # the cluster's name is the deployment
    return chosen


def live_jobs(name: str) -> list[tuple[str, str, str]]:
    return squeue(f"--name={name}-scheduler,{name}-worker",
                  "--states=PENDING,CONFIGURING,RUNNING,COMPLETING")  # fmt: skip


def worker_job_ids(name: str) -> set[str]:
    return {job_id for job_id, job_name, _ in live_jobs(name) if job_name == f"{name}-worker"}


def connected_names(cluster: DeployCluster) -> set[str]:
    return {str(w["name"]) for w in cluster.scheduler_info["workers"].values()}


def logs_of(cluster: DeployCluster) -> str:
    folder = Path(cluster.record.folder) / f"{cluster.name}-logs"  # slurm.log_directory
    return "\n".join(
        f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
        for log in sorted(folder.glob("*.log"))
    )


def test_deploy_cluster_on_slurm_computes_scales_and_closes_cleanly(
    slurm: Slurm, state_root: Path
) -> None:
    name = "api-slurm"
    cluster = DeployCluster("slurm", values=values(name), name=name, timeout=180)
    decided = PublishedDecisions(cluster)
    try:
        assert "scheduler-job.sh" in cluster.manifests()
        assert cluster.record.handles["scheduler_job"]
        cluster.adapt(minimum=0, maximum=2, scale_down_window=2)
        with Client(cluster) as client:

            def slow(x: int) -> int:
                time.sleep(1)
                return x + 1

            futures = client.map(slow, range(12))

            def a_worker_job_connected() -> set[str]:
                decided()  # while the scale-up is among the last decisions published
                return connected_names(cluster) & worker_job_ids(name)

            wait_for(
                "a worker job connects, named by its job id",
                a_worker_job_connected,
                timeout=120,
                logs=lambda: logs_of(cluster),
            )
            assert sum(client.gather(futures)) == sum(range(1, 13))
            del futures
            wait_for(
                "the idle worker jobs were retired and cancelled",
                lambda: (
                    not cluster.scheduler_info["workers"]
                    and not [j for j in live_jobs(name) if j[1].endswith("-worker")]
                ),
                timeout=120,
                logs=lambda: logs_of(cluster),
            )
        assert "up" in decided(), decided.kinds
    finally:
        cluster.close()
    wait_for("no job of the deployment is left", lambda: not live_jobs(name), timeout=90)
    assert not Path(cluster.record.folder).exists()


def dask_deploy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dask_deploy.cli", *args],
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_up_status_down_on_slurm(slurm: Slurm, state_root: Path, tmp_path: Path) -> None:
    name = "api-slurm-cli"
    chosen = values(name)
    chosen["scaler"]["minimum"] = 1  # type: ignore[index]
    values_file = tmp_path / "my-values.yaml"
    values_file.write_text(yaml.safe_dump(chosen))
    up = dask_deploy("up", "slurm", "--values", str(values_file), "--name", name,
                     "--timeout", "180")  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert f"deployment {name} is up on slurm" in up.stdout

    def status() -> dict[str, object]:
        shown = dask_deploy("status", name, "-o", "json")
        assert shown.returncode == 0, shown.stderr + shown.stdout
        parsed: dict[str, object] = json.loads(shown.stdout)
        return parsed

    seen = wait_for("the minimum worker job runs and connects",
                    lambda: (s := status())["workers"] and s, timeout=120)  # fmt: skip
    workers = [w["name"] for w in seen["workers"]]  # type: ignore[attr-defined]
    assert len(workers) == 1
    assert set(workers) == worker_job_ids(name)  # each worker is named by its job id
    assert seen["instances"] == [{"name": workers[0], "state": "running"}], seen
    text = dask_deploy("status", name)
    assert f"instances   1: {workers[0]} running" in text.stdout, text.stdout
    scaler = seen["scaler"]
    assert isinstance(scaler, dict) and scaler["policy"]["minimum"] == 1

    down = dask_deploy("down", name)
    assert down.returncode == 0, down.stderr
    wait_for("no job of the deployment is left", lambda: not live_jobs(name), timeout=90)
