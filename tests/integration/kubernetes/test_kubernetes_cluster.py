"""DeployCluster on the Kubernetes stand-in: the rendered objects created through the API.

The stand-in runs isolated (each container in its own user and mount namespace, the API over
HTTPS), so the rendered pods run unchanged: the scaler container finds its configuration,
its worker template and its service-account token at their mount paths and reaches the API
with the official client's in-cluster configuration; the worker pods resolve the scheduler
Service's name. Nothing is substituted between the rendered manifests and what runs.
"""

from __future__ import annotations

import gc
import json
import operator
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from distributed import Client

from cluster_support import PublishedDecisions, processes_working_in, state_root
from dask_deploy import DeployCluster
from dask_deploy.lifecycle import LaunchError
from dask_deploy.testing.kubernetes import KubernetesStandIn
from kubernetes_support import kubernetes_values, render_kubernetes
from process_support import free_port, tail, wait_for

__all__ = ["state_root"]  # the fixture
pytestmark = [pytest.mark.kubernetes, pytest.mark.integration]

BIN = Path(sys.executable).parent
NAME = "api-k"


def cluster_values() -> dict[str, object]:
    port, dashboard = free_port(), free_port()
    values = kubernetes_values(
        NAME,
        port,
        scaler={"minimum": 0, "maximum": 2, "interval": 0.5, "scale_down_window": 2,
                "startup_timeout": 60, "metrics_port": None},
    )  # fmt: skip
    # Everything binds the loopback: the stand-in's node is this machine.
    values["scheduler"] |= {"dashboard_port": dashboard, "dashboard_host": "127.0.0.1",
                            "extra_args": ["--host", "127.0.0.1"]}  # fmt: skip
    values["worker"]["host"] = "127.0.0.1"
    values.pop("deployment")  # the cluster's name is the deployment
    return values


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KubernetesStandIn]:
    rendered = render_kubernetes(
        {**cluster_values(), "deployment": NAME}, tmp_path / "rendered-for-images"
    )
    host_env = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(tmp_path)}
    with KubernetesStandIn(
        tmp_path / "api",
        isolated=True,
        allowed=rendered.granted(),
        host_env=host_env,
        entrypoints=rendered.entrypoints(),
    ) as standin:
        monkeypatch.setenv("KUBECONFIG", str(standin.write_kubeconfig(tmp_path / "kubeconfig")))
        yield standin


def pod_logs(api: KubernetesStandIn) -> str:
    return "\n".join(f"--- {name}\n{tail(api.log_path(name), 25)}" for name in api.created)


def test_deploy_cluster_on_kubernetes_computes_scales_and_deletes_everything(
    api: KubernetesStandIn, state_root: Path
) -> None:
    logs = lambda: pod_logs(api)  # noqa: E731
    cluster = DeployCluster("kubernetes", values=cluster_values(), name=NAME, timeout=90)
    folder = cluster.record.folder
    decided = PublishedDecisions(cluster)
    try:
        assert "scheduler-deployment.yaml" in cluster.manifests()
        rendered = [yaml.safe_load(text) for name, text in cluster.manifests().items()
                    if name != "kustomization.yaml"]  # fmt: skip
        created = {(o["kind"], o["metadata"]["name"]) for o in rendered if o}
        assert set(api.objects()) == created and len(created) >= 7  # every rendered object
        cluster.adapt(minimum=0, maximum=2, scale_down_window=2)
        with Client(cluster, timeout="60s") as client:
            futures = client.map(time.sleep, [0.5] * 24, pure=False)

            def a_worker_registered() -> bool:
                decided()  # while the scale-up is among the last decisions published
                return len(cluster.scheduler_info["workers"]) >= 1

            wait_for(
                "worker pods registered with the scheduler",
                a_worker_registered,
                90,
                logs,
            )
            assert set(cluster.observed) <= set(api.created)  # named by their pod names
            client.gather(futures)
            assert client.submit(operator.mul, 6, 7).result() == 42
            del futures
            wait_for(
                "the idle workers were retired and their pods deleted",
                lambda: not cluster.scheduler_info["workers"] and len(api.pods()) == 1,
                90,
                logs,
            )
        assert "up" in decided(), decided.kinds
    finally:
        cluster.close()
    assert api.objects() == [], "close() deleted every object it created"
    assert api.pods() == {}, "the scheduler pod went with its Deployment"
    assert processes_working_in(api.workdir) == []
    assert not Path(folder).exists()


def dask_deploy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dask_deploy.cli", *args],
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_up_status_down_on_kubernetes(
    api: KubernetesStandIn, state_root: Path, tmp_path: Path
) -> None:
    chosen = cluster_values()
    chosen["scaler"]["minimum"] = 1  # type: ignore[index]
    values_file = tmp_path / "my-values.yaml"
    values_file.write_text(yaml.safe_dump(chosen))
    up = dask_deploy("up", "kubernetes", "--values", str(values_file), "--name", NAME)
    assert up.returncode == 0, up.stderr
    assert f"deployment {NAME} is up on kubernetes" in up.stdout

    def status() -> dict[str, object]:
        shown = dask_deploy("status", NAME, "-o", "json")
        assert shown.returncode == 0, shown.stderr + shown.stdout
        parsed: dict[str, object] = json.loads(shown.stdout)
        return parsed

    logs = lambda: pod_logs(api)  # noqa: E731
    seen = wait_for("the minimum worker pod runs and connects",
                    lambda: (s := status())["workers"] and s, 90, logs)  # fmt: skip
    (worker,) = [w["name"] for w in seen["workers"]]  # type: ignore[attr-defined]
    assert worker in api.created  # the worker is named by its pod
    assert seen["instances"] == [{"name": worker, "state": "running"}], seen
    assert seen["scaler"]["policy"]["minimum"] == 1  # type: ignore[index]

    down = dask_deploy("down", NAME)
    assert down.returncode == 0, down.stderr
    assert api.objects() == [] and api.pods() == {}
    assert processes_working_in(api.workdir) == []


def test_a_scheduler_that_fails_is_one_error_with_its_log_and_nothing_is_left(
    api: KubernetesStandIn, state_root: Path, recwarn: pytest.WarningsRecorder
) -> None:
    chosen = cluster_values()
    chosen["scheduler"]["extra_args"] = ["--no-such-option"]  # type: ignore[index]
    with pytest.raises(LaunchError) as raised:
        DeployCluster("kubernetes", values=chosen, name=NAME, timeout=60)
    message = str(raised.value)
    assert message.startswith(
        f"the scheduler pod of '{NAME}' has a scheduler container that exited (exit code 2); "
        "its log:"
    )
    assert "Error: Unknown argument specified" in message  # dask scheduler's own words
    assert api.objects() == [] and api.pods() == {}
    assert not (state_root / NAME).exists()
    del raised
    gc.collect()
    assert not [w for w in recwarn if "unclosed cluster" in str(w.message)]
