"""Secure defaults, checked on the committed golden output of every scenario of every backend.

No secret material in any rendered file; the scheduler's comm, dashboard and HTTP API stay
inside the cluster by default; containers run non-root, without privilege escalation, with a
read-only root filesystem and resource limits where the backend has them; Marathon
credentials come only from a file or the environment; checkov passes on the Kubernetes
manifests with every skipped check justified in tests/render/checkov.yaml.
"""

from __future__ import annotations

import fcntl
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"
CHECKOV_CONFIG = Path(__file__).with_name("checkov.yaml")
CHECKOV_VENV = REPO / ".venv-checkov"
SCENARIO_FOLDERS = sorted(p for p in GOLDEN.glob("*/*") if p.is_dir())
FILES = sorted(p for folder in SCENARIO_FOLDERS for p in folder.rglob("*") if p.is_file())

PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
#: `password: x`, `"token": "x"`, `PASSWORD=x`, `--token x`: a secret-looking key with a value.
SECRET_ASSIGNMENT = re.compile(
    r"""["']?\b[\w.-]*(password|passwd|secret|token|api[_-]?key)\b["']?"""
    r"""[ \t]*[:=][ \t]*["']?(?P<value>[^\s"',}]+)""",
    re.IGNORECASE,
)
#: Values that name where a secret lives rather than holding it.
REFERENCE_VALUE = re.compile(r"^(null|~|\$\{?\w+\}?|/[\w./-]+|[\w-]+-tls|[a-z0-9-]+)$")
BASE64_BLOB = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")


def relative(path: Path) -> str:
    return path.relative_to(GOLDEN).as_posix()


@pytest.mark.parametrize("path", FILES, ids=relative)
def test_no_private_key_or_inline_secret_in_rendered_files(path: Path) -> None:
    text = path.read_text()
    assert not PRIVATE_KEY.search(text), f"{relative(path)} holds a private key"
    for match in SECRET_ASSIGNMENT.finditer(text):
        assert REFERENCE_VALUE.match(match.group("value")), (
            f"{relative(path)}: {match.group(0)!r} looks like an inline secret"
        )
    blobs = [b for b in BASE64_BLOB.findall(text) if not re.fullmatch(r"[a-z/._-]+", b)]
    assert not blobs, f"{relative(path)}: base64-looking data {blobs[:2]}"


def kubernetes_objects(folder: Path) -> list[dict[str, Any]]:
    objects = [yaml.safe_load(p.read_text()) for p in sorted(folder.glob("*.yaml"))]
    objects = [o for o in objects if o.get("kind") != "Kustomization"]
    for config_map in [o for o in objects if o["kind"] == "ConfigMap"]:
        if "worker-pod.yaml" in config_map.get("data", {}):
            objects.append(yaml.safe_load(config_map["data"]["worker-pod.yaml"]))
    return objects


KUBERNETES = sorted((GOLDEN / "kubernetes").iterdir())


@pytest.mark.parametrize("folder", KUBERNETES, ids=lambda p: p.name)
def test_kubernetes_has_no_secret_objects_and_no_external_service(folder: Path) -> None:
    objects = kubernetes_objects(folder)
    assert not [o for o in objects if o["kind"] == "Secret"], "Secrets are referenced, not rendered"
    for service in [o for o in objects if o["kind"] == "Service"]:
        spec = service["spec"]
        assert spec.get("type", "ClusterIP") == "ClusterIP"
        assert "externalIPs" not in spec and "loadBalancerIP" not in spec
        assert all("nodePort" not in port for port in spec["ports"])


def pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    specs = [o["spec"]["template"]["spec"] for o in objects if o["kind"] == "Deployment"]
    return specs + [o["spec"] for o in objects if o["kind"] == "Pod"]


@pytest.mark.parametrize("folder", KUBERNETES, ids=lambda p: p.name)
def test_kubernetes_containers_are_non_root_read_only_bounded(folder: Path) -> None:
    specs = pod_specs(kubernetes_objects(folder))
    assert len(specs) == 2, "the scheduler Deployment and the worker pod template"
    for spec in specs:
        pod_context = spec.get("securityContext", {})
        assert spec.get("hostPID") is not True and spec.get("hostIPC") is not True
        for container in spec["containers"] + spec.get("initContainers", []):
            context = {**pod_context, **container.get("securityContext", {})}
            where = container["name"]
            assert context.get("runAsNonRoot") is True, where
            assert context.get("runAsUser", 1) != 0, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("privileged") is not True, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert {"cpu", "memory"} <= set(container["resources"].get("limits", {})), where
            assert all("hostPort" not in port for port in container.get("ports", [])), where


def backend_requests() -> set[tuple[str, str]]:
    """(verb, resource) of every request the kubernetes backend can build: each ``*_request``
    builder of the backend module, called, so a new kind of call shows up here by itself."""
    import inspect

    from dask_deploy.backends import kubernetes as k8s

    settings = k8s.KubernetesSettings("dask", "default", {"metadata": {}, "spec": {}})
    calls = set()
    for name, builder in inspect.getmembers(k8s, inspect.isfunction):
        if name.endswith("_request") and builder.__module__ == k8s.__name__:
            extra = ["dask-worker-abcde"] * (len(inspect.signature(builder).parameters) - 1)
            request = builder(settings, *extra)
            calls.add((request.verb, request.resource))
    assert calls, "no request builders found in dask_deploy.backends.kubernetes"
    return calls


@pytest.mark.parametrize("folder", KUBERNETES, ids=lambda p: p.name)
def test_kubernetes_role_is_exactly_what_the_backend_calls(folder: Path) -> None:
    objects = kubernetes_objects(folder)
    assert not {o["kind"] for o in objects} & {"ClusterRole", "ClusterRoleBinding"}, "namespaced"
    (role,) = [o for o in objects if o["kind"] == "Role"]
    granted = set()
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""], rule  # the core API group only
        assert not {"resourceNames", "nonResourceURLs"} & set(rule), rule
        granted |= {(verb, resource) for verb in rule["verbs"] for resource in rule["resources"]}
    assert "*" not in {part for pair in granted for part in pair}
    assert granted == backend_requests()
    (binding,) = [o for o in objects if o["kind"] == "RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert [(s["kind"], s["name"]) for s in binding["subjects"]] == [("ServiceAccount", account)]


@pytest.mark.parametrize("folder", KUBERNETES, ids=lambda p: p.name)
def test_kubernetes_pods_use_runtime_default_seccomp_and_private_secret_files(
    folder: Path,
) -> None:
    for spec in pod_specs(kubernetes_objects(folder)):
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec.get("hostNetwork") is not True or folder.name == "hostnetwork"
        for volume in spec.get("volumes", []):
            assert "hostPath" not in volume, volume["name"]
            if "secret" in volume:
                mode = volume["secret"].get("defaultMode", 0o644)
                assert mode & 0o007 == 0, f"{volume['name']}: readable by others ({mode:o})"
        for container in spec["containers"]:
            resources = container["resources"]
            # Memory is never overcommitted (Dask's --memory-limit is the request); CPU may be
            # requested below its limit (worker.cpu), never without one in these scenarios.
            assert resources["requests"]["memory"] == resources["limits"]["memory"]
            assert resources["requests"]["cpu"] and resources["limits"]["cpu"], container["name"]


@pytest.mark.parametrize("folder", KUBERNETES, ids=lambda p: p.name)
def test_kubernetes_scaler_token_is_mounted_only_where_used(folder: Path) -> None:
    objects = kubernetes_objects(folder)
    worker_pods = [o for o in objects if o["kind"] == "Pod"]
    assert worker_pods and all(
        p["spec"].get("automountServiceAccountToken") is False for p in worker_pods
    ), "workers do not call the API, so they carry no token"
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    assert spec.get("automountServiceAccountToken") is False, "no token in every container"
    tokens = {
        v["name"]
        for v in spec.get("volumes", [])
        if any("serviceAccountToken" in s for s in (v.get("projected") or {}).get("sources", []))
    }
    holders = {
        c["name"]
        for c in spec["containers"] + spec.get("initContainers", [])
        if {m["name"] for m in c.get("volumeMounts", [])} & tokens
    }
    assert holders == {"scaler"}, "only the scaler calls the API; the scheduler runs client code"


MARATHON = sorted((GOLDEN / "marathon").iterdir())


@pytest.mark.parametrize("folder", MARATHON, ids=lambda p: p.name)
def test_marathon_apps_do_not_ask_for_public_agents_or_host_port_mappings(folder: Path) -> None:
    for path in sorted(folder.glob("*-app.json")):
        app = json.loads(path.read_text())
        assert "slave_public" not in app.get("acceptedResourceRoles", []), path.name
        assert "portMappings" not in json.dumps(app.get("container", {})), path.name
        network_modes = {n.get("mode") for n in app.get("networks", [])}
        assert "container/bridge" not in network_modes, path.name


@pytest.mark.parametrize("folder", MARATHON, ids=lambda p: p.name)
def test_marathon_credentials_come_only_from_a_file_or_the_environment(folder: Path) -> None:
    config = yaml.safe_load((folder / "scaler-config.yaml").read_text())
    options = config["backend"]["options"]
    credentials = {k: v for k, v in options.items() if re.search("cred|auth|user|pass", k)}
    assert set(credentials) <= {"credentials_file"}, credentials
    path = credentials.get("credentials_file")
    assert path is None or str(path).startswith("/"), path
    scaler = json.loads((folder / "scaler-app.json").read_text())
    assert set(scaler.get("secrets", {})) == set(), "no Marathon secrets inlined"
    for path in sorted(folder.glob("*-app.json")):
        names = set(json.loads(path.read_text()).get("env", {}))
        assert not {n for n in names if re.search("PASS|TOKEN|SECRET|AUTH", n.upper())}, path.name


#: Docker CLI options that confine a container; required if an app ever uses the Docker
#: containerizer (the templates use the Mesos containerizer, where they do not exist).
DOCKER_CONFINEMENT = {("read-only", "true"), ("security-opt", "no-new-privileges")}


@pytest.mark.parametrize("folder", MARATHON, ids=lambda p: p.name)
def test_marathon_tasks_run_non_root_with_fixed_resources(folder: Path) -> None:
    for path in sorted(folder.glob("*-app.json")):
        app = json.loads(path.read_text())
        # Without "user" Marathon runs the task as its own --mesos_user, often root.
        assert app.get("user") not in (None, "", "root", "0"), path.name
        assert app["cpus"] > 0 and app["mem"] > 0, path.name  # Mesos enforces both
        container = app.get("container")
        if container is None:
            continue
        if container["type"] == "DOCKER":
            parameters = {(p["key"], p["value"]) for p in container["docker"].get("parameters", [])}
            assert DOCKER_CONFINEMENT <= parameters, path.name
            users = [value for key, value in parameters if key == "user"]
            assert users and users[0].split(":")[0] not in ("0", "root"), path.name
        else:
            assert container["type"] == "MESOS", path.name
        for volume in container.get("volumes", []):
            assert volume.get("mode") == "RO", f"{path.name}: {volume}"


DOCKER = sorted((GOLDEN / "docker").iterdir())


@pytest.mark.parametrize("folder", DOCKER, ids=lambda p: p.name)
def test_docker_publishes_nothing_and_binds_the_scheduler_to_loopback(folder: Path) -> None:
    services = yaml.safe_load((folder / "compose.yaml").read_text())["services"]
    for name, service in services.items():
        assert "ports" not in service and service.get("privileged") is not True, name
        assert service.get("user") not in ("0", "root", 0), name
    command = services["scheduler"]["command"]
    dashboard = command[command.index("--dashboard-address") + 1]
    assert dashboard.startswith("127.0.0.1:"), dashboard
    assert command[command.index("--host") + 1] == "127.0.0.1"


def assert_confined(
    where: str, user: object, read_only: object, security: object, caps: object
) -> None:
    assert str(user).split(":")[0] not in ("0", "root", "None"), where
    assert read_only is True, where
    assert security == ["no-new-privileges:true"], where
    assert caps == ["ALL"], where


@pytest.mark.parametrize("folder", DOCKER, ids=lambda p: p.name)
def test_docker_containers_are_non_root_read_only_bounded(folder: Path) -> None:
    from dask_deploy.backends import BackendContext
    from dask_deploy.backends.docker import load_settings, worker_container_spec

    services = yaml.safe_load((folder / "compose.yaml").read_text())["services"]
    for name, service in services.items():
        assert_confined(
            name,
            service.get("user"),
            service.get("read_only"),
            service.get("security_opt"),
            service.get("cap_drop"),
        )
        assert service.get("tmpfs"), f"{name}: a read-only root needs a writable /tmp"
        assert service.get("mem_limit") and service.get("cpus"), name
    config = yaml.safe_load((folder / "scaler-config.yaml").read_text())
    context = BackendContext(
        config["deployment"], config["scheduler"]["address"], config["backend"]["options"]
    )
    worker = worker_container_spec(load_settings(context), 0, 0.0)
    assert_confined(
        "worker",
        worker.get("user"),
        worker.get("read_only"),
        worker.get("security_opt"),
        worker.get("cap_drop"),
    )
    assert worker.get("mem_limit") and worker.get("nano_cpus"), "worker limits"
    command = worker["command"]
    assert int(command[command.index("--memory-limit") + 1]) == worker["mem_limit"]


SLURM = sorted((GOLDEN / "slurm").iterdir())


@pytest.mark.parametrize("folder", SLURM, ids=lambda p: p.name)
def test_slurm_scripts_do_not_embed_certificates_or_keys(folder: Path) -> None:
    for script in folder.glob("*.sh"):
        text = script.read_text()
        assert "-----BEGIN" not in text
        assert "chmod 777" not in text and "--uid=0" not in text, script.name


SSH = sorted((GOLDEN / "ssh").iterdir())


@pytest.mark.parametrize("folder", SSH, ids=lambda p: p.name)
def test_ssh_verifies_host_keys_and_the_scheduler_stays_put(folder: Path) -> None:
    from dask_deploy.backends import BackendContext
    from dask_deploy.backends.ssh import load_settings, ssh_argv

    config = yaml.safe_load((folder / "scaler-config.yaml").read_text())
    options = config["backend"]["options"]
    settings = load_settings(BackendContext(config["deployment"], "tcp://h:1", options))
    argv = ssh_argv(settings, settings.hosts[0].host)
    checking = argv[argv.index("BatchMode=yes") + 2]
    assert checking in ("StrictHostKeyChecking=yes", "StrictHostKeyChecking=accept-new")
    assert not any("stricthostkeychecking" in o.lower() for o in options["ssh_options"])
    assert "-----BEGIN" not in (folder / "scheduler-start.sh").read_text()


COMMAND = sorted((GOLDEN / "command").iterdir())


@pytest.mark.parametrize("folder", COMMAND, ids=lambda p: p.name)
def test_command_docker_example_runs_workers_non_root_read_only_bounded(folder: Path) -> None:
    script = (folder / "docker-workers.sh").read_text().replace("\\\n", " ")
    run = next(line for line in script.splitlines() if "docker run" in line).split()
    assert run[run.index("--user") + 1].split(":")[0] != "0"
    assert {"--read-only", "--cap-drop", "--memory", "--cpus"} <= set(run)
    assert run[run.index("--cap-drop") + 1] == "ALL"
    assert run[run.index("--security-opt") + 1] == "no-new-privileges:true"
    assert run[run.index("--pull") + 1] == "never" and "-p" not in run and "--publish" not in run


# --------------------------------------------------------------------------- checkov


def checkov_binary() -> Path:
    """checkov from its own venv (its dependency tree fights our pins), built on first use.

    Several xdist workers may ask at once: the first builds under a lock, the others wait for
    it and then find the venv ready; the finished-mark is written only after pip succeeded.
    """
    checkov = CHECKOV_VENV / "bin" / "checkov"
    ready = CHECKOV_VENV / ".installed"
    if ready.is_file():
        return checkov
    with (REPO / ".venv-checkov.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ready.is_file():
            build_checkov_venv()
            ready.touch()
    return checkov


def build_checkov_venv() -> None:
    pin = next(
        line.strip()
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if line.startswith("checkov==")
    )
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(CHECKOV_VENV)],
        # Without compiling every installed module (botocore alone is thousands): the first
        # checkov run writes bytecode for what it imports. Measured: 6 s less CPU to install,
        # 2.4 s more for the first run.
        [str(CHECKOV_VENV / "bin" / "pip"), "install", "--quiet", "--no-compile", pin],
    ]
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            pytest.fail(f"cannot build {CHECKOV_VENV}: {' '.join(step)}\n{result.stderr[-2000:]}")


@pytest.mark.checkov
@pytest.mark.parametrize("folder", KUBERNETES, ids=lambda p: p.name)
def test_checkov_passes_on_the_kubernetes_manifests(folder: Path, tmp_path: Path) -> None:
    checkov = checkov_binary()
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    for index, document in enumerate(kubernetes_objects(folder)):
        (manifests / f"{index:02d}-{document['kind'].lower()}.yaml").write_text(
            yaml.safe_dump(document)
        )
    result = subprocess.run(
        [str(checkov), "--config-file", str(CHECKOV_CONFIG), "-d", str(manifests)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
