"""Rendered Kubernetes manifests: valid for Kubernetes, apply with -k, one test per behaviour."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from dask_deploy.backends import BackendContext
from dask_deploy.backends import kubernetes as k8s
from dask_deploy.config import parse_config
from dask_deploy.testing.kubernetes import KUBERNETES_VERSION, TOKEN_PATH, KubernetesStandIn

pytestmark = pytest.mark.kubernetes

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((REPO / "tests" / "scenarios" / "kubernetes").glob("*-values.yaml"))

RenderScenario = Callable[[str, "Path | dict[str, object]", Path], Path]


def scenario(name: str) -> Path:
    return REPO / "tests" / "scenarios" / "kubernetes" / f"{name}-values.yaml"


class Rendered:
    """The objects of one rendered folder, by file name, with the embedded documents parsed."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.files = {p.name: yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))}

    @property
    def objects(self) -> dict[str, dict[str, Any]]:
        return {n: o for n, o in self.files.items() if n != "kustomization.yaml"}

    @property
    def deployment(self) -> dict[str, Any]:
        return self.files["scheduler-deployment.yaml"]

    def container(self, name: str) -> dict[str, Any]:
        containers = self.deployment["spec"]["template"]["spec"]["containers"]
        return next(c for c in containers if c["name"] == name)

    @property
    def worker_pod(self) -> dict[str, Any]:
        return yaml.safe_load(self.files["worker-configmap.yaml"]["data"]["worker-pod.yaml"])

    @property
    def worker(self) -> dict[str, Any]:
        return self.worker_pod["spec"]["containers"][0]

    @property
    def scaler_config(self) -> dict[str, Any]:
        return yaml.safe_load(self.files["scaler-configmap.yaml"]["data"]["scaler-config.yaml"])

    def pod_specs(self) -> Iterator[dict[str, Any]]:
        yield self.deployment["spec"]["template"]["spec"]
        yield self.worker_pod["spec"]


def render(render_scenario: RenderScenario, name: str, tmp_path: Path) -> Rendered:
    return Rendered(render_scenario("kubernetes", scenario(name), tmp_path))


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda path: path.name)
def test_every_object_validates_against_kubernetes(
    render_scenario: RenderScenario, values: Path, tmp_path: Path
) -> None:
    rendered = Rendered(render_scenario("kubernetes", values, tmp_path))
    documents = {
        **rendered.objects,
        "worker-pod.yaml (in worker-configmap.yaml)": rendered.worker_pod,
    }
    for name, document in documents.items():
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{values.name}: {name}: {'.'.join(map(str, error.path))}: {error.message}")


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda path: path.name)
def test_kustomization_lists_exactly_the_rendered_files(
    render_scenario: RenderScenario, values: Path, tmp_path: Path
) -> None:
    rendered = Rendered(render_scenario("kubernetes", values, tmp_path))
    kustomization = rendered.files["kustomization.yaml"]
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(rendered.objects)
    assert (
        kustomization["namespace"]
        == rendered.files["scaler-rolebinding.yaml"]["subjects"][0]["namespace"]
    )


def test_worker_name_is_the_pod_name_from_the_downward_api(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    worker = render(render_scenario, "defaults", tmp_path).worker
    assert option(worker["args"], "--name") == "$(DASK_WORKER_NAME)"
    variable = next(e for e in worker["env"] if e["name"] == "DASK_WORKER_NAME")
    assert variable["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_tls_mounts_the_secret_and_uses_tls_addresses(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    rendered = render(render_scenario, "tls", tmp_path)
    for spec in rendered.pod_specs():
        assert {
            "name": "tls",
            "secret": {"secretName": "dask-certs", "defaultMode": 0o440},
        } in spec["volumes"]
    for container in (
        rendered.container("scheduler"),
        rendered.container("scaler"),
        rendered.worker,
    ):
        assert {"name": "tls", "mountPath": "/etc/dask/certs", "readOnly": True} in container[
            "volumeMounts"
        ]
    for container in (rendered.container("scheduler"), rendered.worker):
        assert option(container["args"], "--tls-cert") == "/etc/dask/certs/tls.crt"
    assert option(rendered.container("scheduler")["args"], "--protocol") == "tls"
    worker_env = {e["name"]: e.get("value") for e in rendered.worker["env"]}
    assert worker_env["DASK_SCHEDULER_ADDRESS"] == "tls://secure-scheduler:8786"
    config = rendered.scaler_config["scheduler"]
    assert config["address"] == "tls://127.0.0.1:8786"
    assert config["security"]["key_file"] == "/etc/dask/certs/tls.key"
    text = "".join(p.read_text() for p in rendered.out.iterdir())
    assert "BEGIN" not in text  # no inlined certificate or key


def test_service_is_cluster_internal_with_comm_and_dashboard(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    rendered = render(render_scenario, "defaults", tmp_path)
    service = rendered.files["scheduler-service.yaml"]
    assert service["spec"]["type"] == "ClusterIP"
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [
        ("comm", 8786),
        ("dashboard", 8787),
    ]
    pod_labels = rendered.deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert (
        not service["spec"]["selector"].items() <= rendered.worker_pod["metadata"]["labels"].items()
    )


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda path: path.name)
def test_containers_are_non_root_read_only_and_bounded(
    render_scenario: RenderScenario, values: Path, tmp_path: Path
) -> None:
    rendered = Rendered(render_scenario("kubernetes", values, tmp_path))
    for spec in rendered.pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] > 0
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"] == {"drop": ["ALL"]}
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"])
            assert {"cpu", "memory"} <= set(resources["limits"])
            # Memory is never overcommitted: Dask's --memory-limit is the request.
            assert resources["limits"]["memory"] == resources["requests"]["memory"]


def test_each_container_runs_its_roles_image_as_the_images_user(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    # images/README.md: one image per role, user 10001; there is no role-less image.
    rendered = render(render_scenario, "defaults", tmp_path)
    repository = "ghcr.io/dask-deploy/dask-deploy"
    assert rendered.container("scheduler")["image"] == f"{repository}-scheduler:0.1.0"
    assert rendered.container("scaler")["image"] == f"{repository}-scaler:0.1.0"
    assert rendered.worker["image"] == f"{repository}-worker:0.1.0"
    for spec in rendered.pod_specs():
        context = spec["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (10001,) * 3


def test_pull_secrets_go_on_the_scheduler_and_worker_pods(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    settings = {"image": {"repository": "registry.example.com/team/dask-deploy", "tag": "0.1",
                          "pull_secrets": ["regcred"]}}  # fmt: skip
    rendered = Rendered(render_scenario("kubernetes", settings, tmp_path))
    assert rendered.worker["image"] == "registry.example.com/team/dask-deploy-worker:0.1"
    for spec in rendered.pod_specs():
        assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    for spec in render(render_scenario, "defaults", tmp_path).pod_specs():
        assert "imagePullSecrets" not in spec


def test_custom_resources_and_extra_args(render_scenario: RenderScenario, tmp_path: Path) -> None:
    rendered = render(render_scenario, "custom", tmp_path)
    assert rendered.worker["resources"] == {
        "requests": {"cpu": "7500m", "memory": "32Gi", "ephemeral-storage": "100Gi"},
        "limits": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"},
    }
    assert option(rendered.worker["args"], "--memory-limit") == "32Gi"
    assert option(rendered.worker["args"], "--nthreads") == "8"
    assert rendered.worker["args"][-2:] == ["--resources", "GPU=1"]
    assert rendered.container("scheduler")["args"][-2:] == ["--idle-timeout", "3600"]
    assert {"name": "OMP_NUM_THREADS", "value": "1"} in rendered.worker["env"]
    assert rendered.worker_pod["spec"]["terminationGracePeriodSeconds"] == 300
    assert rendered.container("scaler").get("ports") is None  # metrics off


def test_host_network_switch(render_scenario: RenderScenario, tmp_path: Path) -> None:
    for spec in render(render_scenario, "hostnetwork", tmp_path).pod_specs():
        assert (spec["hostNetwork"], spec["dnsPolicy"]) == (True, "ClusterFirstWithHostNet")
    for spec in render(render_scenario, "defaults", tmp_path).pod_specs():
        assert spec["hostNetwork"] is False
        assert "dnsPolicy" not in spec


POD_IP = {"name": "DASK_DEPLOY_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def test_with_host_network_nothing_but_comm_listens_on_every_node_interface(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    rendered = render(render_scenario, "hostnetwork", tmp_path)
    scheduler = rendered.container("scheduler")
    assert option(scheduler["args"], "--dashboard-address") == "$(DASK_DEPLOY_POD_IP):18787"
    assert POD_IP in scheduler["env"]
    assert option(rendered.worker["args"], "--host") == "$(DASK_DEPLOY_POD_IP)"
    assert option(rendered.worker["args"], "--dashboard-address") == "$(DASK_DEPLOY_POD_IP):0"
    assert POD_IP in rendered.worker["env"]
    assert rendered.scaler_config["metrics"]["host"] == "127.0.0.1"
    # In the pod's own network namespace, every interface of the pod is fine.
    defaults = render(render_scenario, "defaults", tmp_path)
    assert option(defaults.container("scheduler")["args"], "--dashboard-address") == ":8787"
    assert "--host" not in defaults.worker["args"]
    assert defaults.scaler_config["metrics"]["host"] == "0.0.0.0"
    # And each is configurable.
    chosen = render_values(
        render_scenario,
        {
            "host_network": True,
            "scheduler": {"dashboard_host": "0.0.0.0"},
            "worker": {"host": "10.0.0.0"},
            "scaler": {"metrics_host": "0.0.0.0"},
        },
        tmp_path,
    )
    assert option(chosen.container("scheduler")["args"], "--dashboard-address") == "0.0.0.0:8787"
    assert option(chosen.worker["args"], "--host") == "10.0.0.0"
    assert POD_IP not in chosen.worker["env"]
    assert chosen.scaler_config["metrics"]["host"] == "0.0.0.0"


def test_worker_pods_belong_to_no_controller(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    rendered = render(render_scenario, "defaults", tmp_path)
    assert [o["kind"] for o in rendered.objects.values()].count("Deployment") == 1
    assert rendered.worker_pod["spec"]["restartPolicy"] == "Never"
    owner = rendered.scaler_config["backend"]["options"]["owner"]
    assert owner == {
        "api_version": "v1",
        "kind": "Pod",
        "name": "${DASK_DEPLOY_POD_NAME}",
        "uid": "${DASK_DEPLOY_POD_UID}",
    }
    scaler_env = {e["name"]: e.get("valueFrom") for e in rendered.container("scaler")["env"]}
    assert scaler_env["DASK_DEPLOY_POD_UID"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
    assert scaler_env["DASK_DEPLOY_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda path: path.name)
def test_scaler_config_is_accepted_by_the_scaler(
    render_scenario: RenderScenario, values: Path, tmp_path: Path
) -> None:
    rendered = Rendered(render_scenario("kubernetes", values, tmp_path))
    config = parse_config(rendered.scaler_config)
    assert config.backend.name == "kubernetes"
    assert config.deployment == yaml.safe_load(values.read_text()).get("deployment", "dask")
    scaler = rendered.container("scaler")
    mounts = {m["mountPath"] for m in scaler["volumeMounts"]}
    assert str(Path(config.backend.options["worker_template"]).parent) in mounts  # type: ignore[arg-type]
    assert str(Path(option(scaler["args"], "--config")).parent) in mounts


def role_rules(rendered: Rendered) -> set[tuple[str, str]]:
    rules = rendered.files["scaler-role.yaml"]["rules"]
    return {
        (verb, resource)
        for rule in rules
        for verb in rule["verbs"]
        for resource in rule["resources"]
    }


def test_role_grants_exactly_what_the_backend_calls(
    render_scenario: RenderScenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run the backend, configured by the rendered scaler config, against a stand-in that enforces
    the rendered Role: every call it makes is allowed, and every rule granted is used."""
    rendered = render(render_scenario, "defaults", tmp_path)
    granted = role_rules(rendered)
    assert granted == set(k8s.RBAC_RULES)
    template = tmp_path / "worker-pod.yaml"
    template.write_text(rendered.files["worker-configmap.yaml"]["data"]["worker-pod.yaml"])
    # Nothing to run: the pods fail to start, which is all this test needs of them.
    with KubernetesStandIn(
        tmp_path / "api", allowed=granted, host_env={"PATH": "/nonexistent"}
    ) as api:
        owner_uid = api.add_owner()
        monkeypatch.setenv("DASK_DEPLOY_POD_NAME", "dask-scheduler-5d8f7-abcde")
        monkeypatch.setenv("DASK_DEPLOY_POD_UID", owner_uid)
        options = dict(rendered.scaler_config["backend"]["options"])
        options |= {
            "worker_template": str(template),
            "kubeconfig": str(api.write_kubeconfig(tmp_path / "kc")),
        }
        backend = k8s.create(BackendContext("dask", "tcp://127.0.0.1:8786", options))

        async def exercise() -> list[dict[str, Any]]:
            try:
                await backend.scale_up(2)
                # Read the pods now: they fail at once, and the scale-down below also deletes
                # every pod that has ended, so afterwards there may be none left to read.
                launched = list(api.pods().values())
                await backend.scale_down([i.name for i in await backend.instances()][:1])
                return launched
            finally:
                await backend.close()

        launched = asyncio.run(exercise())
        assert set(api.calls) == granted
        assert len(launched) == 2
        for pod in launched:
            assert pod["metadata"]["ownerReferences"][0]["uid"] == owner_uid


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda path: path.name)
def test_containers_run_their_images_entrypoint_under_tini(
    render_scenario: RenderScenario, values: Path, tmp_path: Path
) -> None:
    # `command:` replaces the image's ENTRYPOINT (tini, which forwards SIGTERM and reaps).
    rendered = Rendered(render_scenario("kubernetes", values, tmp_path))
    for spec in rendered.pod_specs():
        for container in spec["containers"]:
            assert "command" not in container, container["name"]
            assert container["args"], container["name"]
    assert option(rendered.container("scaler")["args"], "--config").endswith(".yaml")
    assert rendered.worker["args"][0] == "$(DASK_SCHEDULER_ADDRESS)"


def token_volumes(spec: dict[str, Any]) -> set[str]:
    return {
        volume["name"]
        for volume in spec.get("volumes", [])
        if any(
            "serviceAccountToken" in s for s in (volume.get("projected") or {}).get("sources", [])
        )
    }


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda path: path.name)
def test_only_the_scaler_container_mounts_the_service_account_token(
    render_scenario: RenderScenario, values: Path, tmp_path: Path
) -> None:
    rendered = Rendered(render_scenario("kubernetes", values, tmp_path))
    spec = rendered.deployment["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    (token,) = token_volumes(spec)
    mounting = {
        container["name"]: mount
        for container in spec["containers"]
        for mount in container.get("volumeMounts", [])
        if mount["name"] == token
    }
    assert mounting == {"scaler": {"name": token, "mountPath": TOKEN_PATH, "readOnly": True}}
    sources = next(v for v in spec["volumes"] if v["name"] == token)["projected"]["sources"]
    # What the in-cluster client reads: token, ca.crt, namespace.
    paths = {item["path"] for s in sources for item in (next(iter(s.values())).get("items") or [])}
    assert paths | {sources[0]["serviceAccountToken"]["path"]} == {"token", "ca.crt", "namespace"}
    assert not token_volumes(rendered.worker_pod["spec"])


def test_in_the_stand_in_the_scheduler_container_has_no_token(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    """The scheduler pod as its Deployment creates it, admitted and started by the stand-in
    (which mounts a token into every container unless the pod opts out, as the API server's
    ServiceAccount admission does): only the scaler sees a token."""
    rendered = render(render_scenario, "defaults", tmp_path)
    template = rendered.deployment["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {**template["metadata"]}}
    pod["metadata"]["name"] = "dask-scheduler-5d8f7-abcde"
    pod["spec"] = template["spec"]
    sleeper = ["python3", "-c", "import time; time.sleep(60)"]
    entrypoints = {c["image"]: sleeper for c in template["spec"]["containers"]}
    with KubernetesStandIn(tmp_path / "api", entrypoints=entrypoints) as api:
        for configmap in ("scaler-configmap.yaml", "worker-configmap.yaml"):  # it mounts them
            path = "/api/v1/namespaces/default/configmaps"
            code, answer = api.handle("POST", path, rendered.files[configmap])
            assert code == 201, answer
        code, answer = api.handle("POST", "/api/v1/namespaces/default/pods", pod)
        assert code == 201, answer
        name = pod["metadata"]["name"]
        assert api.pods()[name]["status"]["phase"] == "Running"
        assert TOKEN_PATH not in api.mounts(name, "scheduler")
        token = api.mounts(name, "scaler")[TOKEN_PATH]
        assert (token / "token").read_text()
        assert (token / "namespace").read_text() == "default"
        assert (token / "ca.crt").is_file()


def render_values(
    render_scenario: RenderScenario, values: dict[str, object], tmp_path: Path
) -> Rendered:
    """Render ``values`` over the defaults; every object must still validate (strict)."""
    rendered = Rendered(render_scenario("kubernetes", values, tmp_path))
    for document in [*rendered.objects.values(), rendered.worker_pod]:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    return rendered


PLACEMENT = {
    "node_selector": {"node-pool": "dask"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "dask"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                ]
            }
        }
    },
    "priority_class_name": "dask-high",
    "annotations": {"example.org/cost-center": "42"},
    "labels": {"team": "data"},
}


def test_placement_pull_secrets_annotations_and_labels_reach_both_pods(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    values = {
        "image": {"pull_secrets": ["registry-a", "registry-b"]},
        "scheduler": PLACEMENT,
        "worker": {**PLACEMENT, "node_selector": {"node-pool": "workers"}},
    }
    rendered = render_values(render_scenario, values, tmp_path)
    template = rendered.deployment["spec"]["template"]
    for pod, selector in ((template, "dask"), (rendered.worker_pod, "workers")):
        spec = pod["spec"]
        assert spec["imagePullSecrets"] == [{"name": "registry-a"}, {"name": "registry-b"}]
        assert spec["nodeSelector"] == {"node-pool": selector}
        assert spec["tolerations"] == PLACEMENT["tolerations"]
        assert spec["affinity"] == PLACEMENT["affinity"]
        assert spec["priorityClassName"] == "dask-high"
        assert pod["metadata"]["annotations"] == {"example.org/cost-center": "42"}
        assert pod["metadata"]["labels"]["team"] == "data"
    # The selector still matches only what dask-deploy labels.
    assert "team" not in rendered.deployment["spec"]["selector"]["matchLabels"]
    defaults = render_values(render_scenario, {}, tmp_path).pod_specs()
    for spec in defaults:
        assert not {"imagePullSecrets", "nodeSelector", "tolerations", "affinity"} & set(spec)


def test_worker_cpu_request_without_limit_gpus_and_bounded_scratch(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    values = {
        "worker": {"threads": 2, "cpu": "500m", "cpu_limit": False, "gpus": 2},
    }
    values["worker"]["local_storage"] = "20Gi"
    rendered = render_values(render_scenario, values, tmp_path)
    assert rendered.worker["resources"] == {
        "requests": {"cpu": "500m", "memory": "4Gi", "ephemeral-storage": "20Gi"},
        "limits": {"memory": "4Gi", "nvidia.com/gpu": "2"},
    }
    assert option(rendered.worker["args"], "--nthreads") == "2"
    tmp = next(v for v in rendered.worker_pod["spec"]["volumes"] if v["name"] == "tmp")
    assert tmp == {"name": "tmp", "emptyDir": {"sizeLimit": "20Gi"}}
    # By default: the thread count, requested and limited.
    default = render_values(render_scenario, {}, tmp_path).worker["resources"]
    assert default == {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"cpu": "2", "memory": "4Gi"},
    }


def test_prometheus_annotations_point_at_the_scalers_metrics(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    values = {"scaler": {"prometheus_annotations": True, "metrics_port": 9100}}
    template = render_values(render_scenario, values, tmp_path).deployment["spec"]["template"]
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9100",
        "prometheus.io/path": "/metrics",
    }
    scaler = next(c for c in template["spec"]["containers"] if c["name"] == "scaler")
    assert scaler["ports"] == [{"name": "metrics", "containerPort": 9100}]
    off = render_values(render_scenario, {}, tmp_path).deployment["spec"]["template"]
    assert "annotations" not in off["metadata"]


def test_disruption_budget_protects_the_scheduler_only_when_asked(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    protected = render_values(render_scenario, {"scheduler": {"disruption_budget": True}}, tmp_path)
    budget = protected.files["scheduler-poddisruptionbudget.yaml"]
    assert budget["spec"]["maxUnavailable"] == 0
    pod_labels = protected.deployment["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert not budget["spec"]["selector"]["matchLabels"].items() <= (
        protected.worker_pod["metadata"]["labels"].items()
    )
    default = render_values(render_scenario, {}, tmp_path)
    assert default.files["scheduler-poddisruptionbudget.yaml"]["spec"]["maxUnavailable"] == 1


def test_load_balancer_without_tls_warns_and_can_limit_its_sources(
    render_scenario: RenderScenario, tmp_path: Path
) -> None:
    values = {
        "scheduler": {"service_type": "LoadBalancer", "service_source_ranges": ["10.1.0.0/16"]}
    }
    rendered = render_values(render_scenario, values, tmp_path)
    text = (rendered.out / "scheduler-service.yaml").read_text()
    assert "# WARNING: a LoadBalancer without TLS" in text
    service = rendered.files["scheduler-service.yaml"]
    assert service["spec"]["loadBalancerSourceRanges"] == ["10.1.0.0/16"]
    open_lb = render_values(
        render_scenario, {"scheduler": {"service_type": "LoadBalancer"}}, tmp_path
    )
    assert "every address is let in" in (open_lb.out / "scheduler-service.yaml").read_text()
    with_tls = render_values(
        render_scenario,
        {"scheduler": {"service_type": "LoadBalancer"}, "tls": {"enabled": True}},
        tmp_path,
    )
    assert "WARNING" not in (with_tls.out / "scheduler-service.yaml").read_text()
    cluster_ip = render_values(render_scenario, {}, tmp_path)
    assert "loadBalancerSourceRanges" not in cluster_ip.files["scheduler-service.yaml"]["spec"]
