"""DeployCluster on the Marathon stand-in: the rendered apps posted, scaled, deleted."""

from __future__ import annotations

import operator
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from distributed import Client

from cluster_support import processes_working_in, state_root
from dask_deploy import DeployCluster
from dask_deploy.testing.marathon import MarathonStandIn
from marathon_support import (
    free_offered_port,
    marathon_standin,
    marathon_values,
    sandbox_logs,
    worker_task_ids,
)
from process_support import wait_for

__all__ = ["state_root"]  # the fixture
pytestmark = [pytest.mark.marathon, pytest.mark.integration]


@pytest.fixture
def marathon(tmp_path: Path) -> Iterator[MarathonStandIn]:
    with marathon_standin(workdir=tmp_path / "sandboxes") as standin:
        yield standin


def test_deploy_cluster_on_marathon_computes_scales_and_deletes_its_apps(
    marathon: MarathonStandIn, state_root: Path
) -> None:
    scaler = {"minimum": 0, "maximum": 2, "interval": 0.5, "scale_down_window": 2,
              "startup_timeout": 60, "metrics_port": None}  # fmt: skip
    values = marathon_values(
        "api-m",
        marathon,
        free_offered_port(marathon),
        free_offered_port(marathon),
        image={"repository": None},
        scaler=scaler,
    )
    values.pop("deployment")  # the cluster's name is the deployment
    logs = lambda: sandbox_logs(marathon)  # noqa: E731
    cluster = DeployCluster("marathon", values=values, name="api-m", timeout=90)
    try:
        assert sorted(cluster.manifests()) == [
            "scaler-app.json", "scaler-config.yaml", "scheduler-app.json", "worker-app.json"
        ]  # fmt: skip
        cluster.scale(2)
        cluster.wait_for_workers(2, timeout=90)
        tasks = worker_task_ids(marathon, "/api-m/worker")
        assert set(cluster.observed) == tasks  # each worker is named by its task id
        with Client(cluster, timeout="60s") as client:
            assert client.submit(operator.add, 2, 3).result() == 5
        cluster.adapt(minimum=0, maximum=2, scale_down_window=2)
        wait_for("the idle workers were retired", lambda: not cluster.scheduler_info["workers"],
                 90, logs)  # fmt: skip
    finally:
        cluster.close()
    assert not Path(cluster.record.folder).exists()
    apps = requests.get(f"{marathon.url}/v2/apps", timeout=5).json()["apps"]
    assert apps == [], "close() deleted every app it posted"
    wait_for("every task ended", lambda: not requests.get(
        f"{marathon.url}/v2/tasks", timeout=5).json()["tasks"], 30)  # fmt: skip
    # The stand-in still runs: the tasks' processes ended because their apps were deleted.
    wait_for("no task process is left", lambda: not processes_working_in(marathon.workdir), 30)
