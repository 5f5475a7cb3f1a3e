"""The rendered Kubernetes manifests, as the stand-in end-to-end and fault tests use them.

A cluster would mount the worker-pod and scaler ConfigMaps into the scaler's pod and resolve
the scheduler Service's DNS name; here ``Rendered`` reads those files out of the rendered
manifests and ``local_worker_pod`` points the worker pods at the scheduler on 127.0.0.1.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dask_deploy.testing.kubernetes import KubernetesStandIn
from process_support import start, tail, wait_for
from render_support import render_over_defaults

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "images" / "dask-deploy" / "Dockerfile"
#: A stage of the images' Dockerfile and its ENTRYPOINT (JSON form).
_STAGE_ENTRYPOINT = re.compile(
    r"^FROM \S+ AS (\w+)$(?:(?!^FROM ).)*?^ENTRYPOINT (\[.*?\])$", re.M | re.S
)


def image_entrypoints(images: Iterable[str]) -> dict[str, list[str]]:
    """Each ``<repository>-<role>:<tag>`` image's ENTRYPOINT from images/dask-deploy/Dockerfile,
    without tini (the stand-in runs processes on the host, in their own process group): what
    a container that gives only ``args`` runs."""
    stages = {
        stage: json.loads(entrypoint)
        for stage, entrypoint in _STAGE_ENTRYPOINT.findall(DOCKERFILE.read_text())
    }
    entrypoints = {}
    for image in images:
        role = image.rsplit(":", 1)[0].rsplit("-", 1)[-1]
        argv = stages[role]
        entrypoints[image] = argv[2:] if argv[:2] == ["/usr/bin/tini", "--"] else argv
    return entrypoints


def kubernetes_values(deployment: str, port: int, **sections: Any) -> dict[str, Any]:
    """Values for a test deployment: single-threaded workers without nanny, quick to stop.

    ``sections`` replace whole top-level sections (``scaler``, ``tls``, ``scheduler``).
    """
    return copy.deepcopy(
        {
            "deployment": deployment,
            "scheduler": {"port": port},
            "worker": {
                "threads": 1,
                "memory": "1Gi",
                "death_timeout": 20,
                # The worker preload's handover (as rendered by default), shortened; the grace
                # period covers it and the 10 s a nanny may take to stop its worker after.
                "termination_grace_period": 20,
                "handover_timeout": 10,
                "extra_args": ["--no-nanny"],
            },
            **sections,
        }
    )


@dataclass(frozen=True)
class Rendered:
    """The folder `dask-deploy render --backend kubernetes` wrote, read as the cluster would."""

    out: Path

    def manifest(self, name: str) -> dict[str, Any]:
        return dict(yaml.safe_load((self.out / name).read_text()))

    def configmap_file(self, manifest: str, key: str) -> dict[str, Any]:
        """A file a ConfigMap mounts, parsed."""
        return dict(yaml.safe_load(self.manifest(manifest)["data"][key]))

    def granted(self) -> set[tuple[str, str]]:
        """(verb, resource) pairs the rendered Role grants the scaler."""
        rules = self.manifest("scaler-role.yaml")["rules"]
        return {(v, r) for rule in rules for v in rule["verbs"] for r in rule["resources"]}

    def worker_pod(self) -> dict[str, Any]:
        return self.configmap_file("worker-configmap.yaml", "worker-pod.yaml")

    def scaler_config(self) -> dict[str, Any]:
        return self.configmap_file("scaler-configmap.yaml", "scaler-config.yaml")

    def entrypoints(self) -> dict[str, list[str]]:
        """The rendered images' entrypoints, for the stand-in (``entrypoints=``)."""
        images = [c["image"] for c in self.containers().values()]
        return image_entrypoints([*images, self.worker_pod()["spec"]["containers"][0]["image"]])

    def argv(self, container: str) -> list[str]:
        """What a scheduler pod's container runs: its image's entrypoint, then its args."""
        spec = self.containers()[container]
        entrypoint = spec.get("command") or self.entrypoints()[spec["image"]]
        return [*entrypoint, *spec.get("args", [])]

    def containers(self) -> dict[str, dict[str, Any]]:
        """The scheduler pod's containers (scheduler, scaler) by name."""
        pod = self.manifest("scheduler-deployment.yaml")["spec"]["template"]["spec"]
        return {c["name"]: c for c in pod["containers"]}


def render_kubernetes(values: dict[str, Any], out: Path) -> Rendered:
    render_over_defaults("kubernetes", values, out)
    return Rendered(out)


def local_worker_pod(worker_pod: dict[str, Any], scheduler_address: str) -> str:
    """Point the worker pod at ``scheduler_address`` (for the Service's DNS name, which only a
    cluster resolves); returns the address the manifest had."""
    for variable in worker_pod["spec"]["containers"][0]["env"]:
        if variable["name"] == "DASK_SCHEDULER_ADDRESS":
            rendered = str(variable["value"])
            variable["value"] = scheduler_address
            return rendered
    raise AssertionError("the worker pod has no DASK_SCHEDULER_ADDRESS")


def running_pods(api: KubernetesStandIn) -> set[str]:
    """Pods that run and are not being deleted."""
    return {
        name
        for name, pod in api.pods().items()
        if pod["status"]["phase"] == "Running" and "deletionTimestamp" not in pod["metadata"]
    }


def wait_for_retired_pods_deleted(
    api: KubernetesStandIn, survivors: set[str], logs: Callable[[], str]
) -> None:
    """Wait until the pods deleted are exactly those created that did not survive the idle.

    A retired worker (no nanny) exits by itself and its pod ends before the scaler's DELETE
    arrives: the deletion is the scaler's next step, not instant.
    """
    wait_for(
        "exactly the retired workers' pods are deleted",
        lambda: set(api.deleted) == set(api.created) - survivors,
        30,
        logs,
    )


def deployment_logs(api: KubernetesStandIn, logs_dir: Path) -> Callable[[], str]:
    """What a failed wait prints: the scheduler's and scaler's logs, then each pod's tail."""

    def logs() -> str:
        parts = [tail(logs_dir / "scheduler.log"), tail(logs_dir / "scaler.log", 40)]
        parts += [tail(api.log_path(name), 10) for name in api.created]
        return "\n".join(parts)

    return logs


def start_scheduler_and_scaler(
    api: KubernetesStandIn,
    rendered: Rendered,
    tmp_path: Path,
    port: int,
    pod_name: str,
    scheduler_preloads: Iterable[str] = (),
) -> list[subprocess.Popen[bytes]]:
    """The scheduler pod's two containers as local processes: a scheduler on ``port`` and the
    rendered scaler configuration, pointed at the stand-in and at a worker pod that joins that
    scheduler. Logs go to ``tmp_path/logs``; ``pod_name`` is what the downward API would give;
    ``scheduler_preloads`` are more ``--preload`` modules (or files) for the scheduler."""
    bin_dir = Path(sys.executable).parent
    logs_dir = tmp_path / "logs"
    worker_pod = rendered.worker_pod()
    local_worker_pod(worker_pod, f"tcp://127.0.0.1:{port}")
    (tmp_path / "worker-pod.yaml").write_text(yaml.safe_dump(worker_pod))
    config = rendered.scaler_config()
    config["metrics"]["host"] = "127.0.0.1"
    config["backend"]["options"] |= {
        "worker_template": str(tmp_path / "worker-pod.yaml"),
        "kubeconfig": str(api.write_kubeconfig(tmp_path / "kubeconfig")),
    }
    (tmp_path / "scaler-config.yaml").write_text(yaml.safe_dump(config))
    scheduler = [str(bin_dir / "dask"), "scheduler", "--preload", "dask_deploy.scheduler_preload"]
    scheduler += ["--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"]
    scheduler += [arg for preload in scheduler_preloads for arg in ("--preload", preload)]
    scaler = [
        str(bin_dir / "dask-deploy"),
        "scale",
        "--config",
        str(tmp_path / "scaler-config.yaml"),
    ]
    pod = {"DASK_DEPLOY_POD_NAME": pod_name, "DASK_DEPLOY_POD_UID": api.add_owner()}
    return [
        start(scheduler, logs_dir / "scheduler.log"),
        start(scaler, logs_dir / "scaler.log", pod),
    ]
