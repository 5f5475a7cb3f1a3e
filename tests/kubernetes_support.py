"""The rendered Kubernetes manifests, as the stand-in end-to-end and fault tests use them.

A cluster would mount the worker-pod and scaler ConfigMaps into the scaler's pod and resolve
the scheduler Service's DNS name; here ``Rendered`` reads those files out of the rendered
manifests and ``local_worker_pod`` points the worker pods at the scheduler on 127.0.0.1.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dask_deploy.testing.kubernetes import KubernetesStandIn
from process_support import tail
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
                "termination_grace_period": 10,
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


def deployment_logs(api: KubernetesStandIn, logs_dir: Path) -> Callable[[], str]:
    """What a failed wait prints: the scheduler's and scaler's logs, then each pod's tail."""

    def logs() -> str:
        parts = [tail(logs_dir / "scheduler.log"), tail(logs_dir / "scaler.log", 40)]
        parts += [tail(api.log_path(name), 10) for name in api.created]
        return "\n".join(parts)

    return logs
