"""DeployCluster on the local backend: a real scheduler, the real scaler, real workers."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from distributed import Client

from cluster_support import (
    PublishedDecisions,
    metric,
    metrics_url,
    processes_mentioning,
    state_root,
)
from dask_deploy import DeployCluster, SettingsError
from process_support import tail, wait_for

__all__ = ["state_root"]  # the fixture
pytestmark = pytest.mark.integration

FAST = ["scaler.interval=0.5"]


def logs(cluster: DeployCluster) -> str:
    folder = Path(cluster.record.folder)
    return "\n".join(tail(folder / log, 30) for log in ("scaler.log", "scheduler.log"))


def test_adapt_computes_scales_up_and_down_and_close_leaves_no_process(state_root: Path) -> None:
    cluster = DeployCluster("local", set=FAST, name="e2e")
    folder = cluster.record.folder
    decided = PublishedDecisions(cluster)
    try:
        cluster.adapt(minimum=0, maximum=4, scale_down_window=2)
        with Client(cluster) as client:

            def slow(x: int) -> int:
                time.sleep(0.5)
                return x * 2

            futures = client.map(slow, range(24))

            def more_than_one_worker() -> bool:
                decided()  # while the scale-up is among the last decisions published
                return len(cluster.scheduler_info["workers"]) > 1

            wait_for(
                "the scaler started more than one worker",
                more_than_one_worker,
                logs=lambda: logs(cluster),
            )
            assert sum(client.gather(futures)) == 2 * sum(range(24))
            del futures
            wait_for(
                "the idle workers were retired down to the minimum (0)",
                lambda: not cluster.scheduler_info["workers"],
                logs=lambda: logs(cluster),
            )

        # The scaler publishes a tick's decision once the tick is over.
        wait_for("the scaler published its scale-down", lambda: "down" in decided())
        assert "up" in decided.kinds
    finally:
        cluster.close()
    assert processes_mentioning(folder) == []
    assert not Path(folder).exists()  # forgotten: `dask-deploy status e2e` no longer finds it


def test_context_manager_scale_and_manifests(state_root: Path) -> None:
    with DeployCluster("local", set=FAST, name="ctx") as cluster:
        folder = cluster.record.folder
        assert "scaler-config.yaml" in cluster.manifests()
        assert "name: local" in cluster.manifests()["scaler-config.yaml"]
        cluster.scale(2)
        cluster.wait_for_workers(2, timeout=90)
        assert sorted(cluster.observed) == ["ctx-0", "ctx-1"]
    assert processes_mentioning(folder) == []


def test_adapt_changes_the_running_scalers_bounds_within_two_ticks(state_root: Path) -> None:
    with DeployCluster("local", set=FAST, name="bounds") as cluster:
        scaler_log = Path(cluster.record.folder) / "scaler.log"
        url = wait_for("the scaler announced its metrics", lambda: metrics_url(scaler_log))
        wait_for("the scaler ticked", lambda: (metric(url, "dask_deploy_ticks_total") or 0) >= 1)
        assert metric(url, "dask_deploy_policy_maximum_workers") == 4
        cluster.adapt(minimum=2, maximum=3)
        # Counted from the moment the request is with the scheduler (adapt returns then): the
        # scaler keeps ticking while a loaded machine answers the request's RPC.
        ticks_before = metric(url, "dask_deploy_ticks_total")
        assert ticks_before is not None
        wait_for(
            "the scaler applied the new bounds",
            lambda: metric(url, "dask_deploy_policy_minimum_workers") == 2,
            logs=lambda: logs(cluster),
            poll=0.05,
        )
        ticks_at_change = metric(url, "dask_deploy_ticks_total")
        assert ticks_at_change is not None and ticks_at_change - ticks_before <= 2
        assert metric(url, "dask_deploy_policy_maximum_workers") == 3
        assert "policy changed by request" in scaler_log.read_text()
        assert "adaptive minimum=2 maximum=3 (was adaptive minimum=0 maximum=4)" in (
            scaler_log.read_text()
        )
        cluster.wait_for_workers(2, timeout=90)  # the new minimum is kept


def test_invalid_adapt_raises_the_line_the_cli_prints(state_root: Path, tmp_path: Path) -> None:
    with DeployCluster("local", set=FAST, name="bad") as cluster:
        with pytest.raises(SettingsError) as raised:
            cluster.adapt(minimum=3, maximum=1)
        config = tmp_path / "scaler.yaml"
        config.write_text(
            "scheduler: {address: 'tcp://127.0.0.1:1'}\nbackend: {name: fake}\n"
            "policy: {name: adaptive, minimum: 3, maximum: 1}\n"
        )
        cli = subprocess.run(
            [sys.executable, "-m", "dask_deploy.cli", "scale", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 2
        assert cli.stderr.strip() == f"dask-deploy scale: error: {raised.value}"
        assert (
            str(raised.value) == "policy.maximum: got 1, expected an integer >= policy.minimum (3)"
        )
        with pytest.raises(SettingsError, match="growth_factr"):
            cluster.adapt(maximum=2, growth_factr=3)


def test_from_name_in_a_second_process_sees_the_same_workers(state_root: Path) -> None:
    with DeployCluster("local", set=FAST, name="shared") as cluster:
        cluster.scale(2)
        cluster.wait_for_workers(2, timeout=90)
        script = (
            "from dask_deploy import DeployCluster\n"
            "c = DeployCluster.from_name('shared', backend='local')\n"
            "print(sorted(c.observed))\n"
            "c.close()\n"
        )
        second = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 0, second.stderr
        assert second.stdout.strip() == str(sorted(cluster.observed))
        # The second process only detached: the deployment and its workers still run.
        time.sleep(1)
        assert len(cluster.scheduler_info["workers"]) == 2
        assert cluster.scaler_status() is not None
        with pytest.raises(SettingsError, match="'local', the backend 'shared' runs on"):
            DeployCluster.from_name("shared", backend="slurm")


async def test_asynchronous_cluster_scales_and_closes(state_root: Path) -> None:
    async with DeployCluster("local", set=FAST, name="aio", asynchronous=True) as cluster:
        folder = cluster.record.folder
        await cluster.scale(1)
        await cluster._wait_for_workers(1, timeout=90)
        status = await cluster.scaler_status()
        assert status is not None and status["policy"]["name"] == "fixed"
        await cluster.adapt(maximum=2)  # the maximum given, the minimum back to 0
    assert processes_mentioning(folder) == []
