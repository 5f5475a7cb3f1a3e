"""Launchers of the templated backends: render, then apply with the resource manager's own tool.

Each one renders the backend's templates exactly as ``dask-deploy render`` does (the
deployment's name is its ``deployment`` value) into ``<deployment folder>/manifests/``,
then does what the backend's README tells a user to do: ``sbatch scheduler-job.sh`` for
SLURM, ``docker compose up`` for Docker, a ``POST /v2/apps`` of each app for Marathon, and
for Kubernetes what ``kubectl apply -k`` does: create each object through the API. Commands
are built by pure functions and run in one place (:func:`run_command`).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._errors import SettingsError, UserInputError
from .render import render, render_files
from .values import ResolvedValues, load_values_file, resolve_values

MANIFESTS = "manifests"


class CommandError(UserInputError):
    """A resource manager's command failed (exit 1): its own words, in one message."""

    exit_code = 1


def run_command(
    argv: Sequence[str], cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> str:
    """Run ``argv``; its standard output, or :class:`CommandError` with its standard error."""
    try:
        done = subprocess.run(
            list(argv),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **(env or {})},
        )
    except FileNotFoundError:
        raise CommandError(f"{argv[0]}: not found (is it installed and on PATH?)") from None
    if done.returncode != 0:
        raise CommandError(
            f"`{' '.join(argv)}` failed (exit {done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[-2000:]}"
        )
    return done.stdout


def resolve_for(
    backend: str,
    name: str,
    values: Mapping[str, Any] | str | os.PathLike[str] | None,
    sets: Sequence[str],
) -> ResolvedValues:
    """The backend's values with the user's over them and the deployment named ``name``."""
    user: Mapping[str, Any] = (
        {}
        if values is None
        else values
        if isinstance(values, Mapping)
        else load_values_file(values)
    )
    resolved = resolve_values(backend, overrides=[user, {"deployment": name}], sets=sets)
    if resolved.values["deployment"] != name:
        raise SettingsError(
            "deployment",
            resolved.values["deployment"],
            f"the deployment's name {name!r} (choose it with --name, not with deployment)",
        )
    return resolved


def _tail(path: Path, lines: int = 20) -> str:
    if not path.is_file():
        return f"  (no log at {path})"
    return "\n".join(
        f"  | {line}" for line in path.read_text(errors="replace").splitlines()[-lines:]
    )


class TemplatedLauncher:
    """What every templated backend shares: the rendered files."""

    backend = ""

    def __init__(
        self,
        name: str,
        values: Mapping[str, Any] | str | os.PathLike[str] | None,
        sets: Sequence[str],
        folder: Path,
    ) -> None:
        self.name = name
        self.folder = folder
        self.resolved = resolve_for(self.backend, name, values, sets)
        self.files = render_files(self.resolved)  # a template error stops here, before launch

    def manifests(self) -> dict[str, str]:
        return dict(self.files)

    def write(self, record_folder: Path) -> Path:
        out = record_folder / MANIFESTS
        render(self.resolved, out)
        return out

    def launch(self, record: Any, timeout: float) -> str:
        """Apply the rendered files; the scheduler address once it listens."""
        raise NotImplementedError

    @staticmethod
    def stop(record: Any) -> None:
        """Take down what :meth:`launch` applied."""
        raise NotImplementedError

    @staticmethod
    def backend_options_here(record: Any, options: Mapping[str, Any]) -> dict[str, Any]:
        """The scaler's backend options as this machine can use them (``status`` lists the
        instances with them); the same options unless the scaler runs somewhere else."""
        return dict(options)


# --------------------------------------------------------------------------- SLURM


def sbatch_command(script: str = "scheduler-job.sh") -> list[str]:
    """Submit the scheduler job, as templates/slurm/README.md says."""
    return ["sbatch", "--parsable", script]


def parse_job_id(sbatch_output: str) -> str:
    """``12345`` from ``sbatch --parsable`` output (``12345`` or ``12345;cluster``)."""
    return sbatch_output.strip().split(";")[0]


def squeue_job_command(job_id: str) -> list[str]:
    return ["squeue", "--noheader", "--format=%T", f"--jobs={job_id}"]


def scancel_commands(name: str, job_id: str | None) -> list[list[str]]:
    """Cancel the scheduler job (its scaler cancels the workers), then any worker job left."""
    commands = [] if job_id is None else [["scancel", job_id]]
    return [*commands, ["scancel", f"--name={name}-worker"]]


class SlurmLauncher(TemplatedLauncher):
    """``sbatch scheduler-job.sh`` in the rendered folder; the address from the scheduler file."""

    backend = "slurm"

    def _workdir(self, manifests: Path) -> Path:
        configured = self.resolved.values["slurm"]["workdir"]
        return Path(configured) if configured else manifests

    def _log_folder(self, workdir: Path) -> Path:
        """Where the jobs write their output (``slurm.log_directory``; default beside workdir)."""
        configured = self.resolved.values["slurm"]["log_directory"]
        return workdir / (configured or f"../{self.name}-logs")

    def _scheduler_file(self, workdir: Path) -> Path:
        """The scheduler file (``scheduler.scheduler_file``; default ``<deployment>-scheduler.json``
        in workdir, as the templates' ``scheduler_file`` macro says)."""
        configured = self.resolved.values["scheduler"]["scheduler_file"]
        return workdir / (configured or f"{self.name}-scheduler.json")

    def launch(self, record: Any, timeout: float) -> str:
        manifests = self.write(record.path)
        workdir = self._workdir(manifests)
        log_folder = self._log_folder(workdir)
        log_folder.mkdir(parents=True, exist_ok=True)  # SLURM does not create --output's folder
        job_id = parse_job_id(run_command(sbatch_command(), cwd=manifests))
        record.handles["scheduler_job"] = job_id
        record.handles["workdir"] = str(workdir)
        record.save()
        scheduler_file = self._scheduler_file(workdir)
        log = log_folder / f"{self.name}-scheduler-{job_id}.log"
        deadline = time.monotonic() + timeout
        while True:
            try:
                address = str(json.loads(scheduler_file.read_text())["address"])
                break
            except (OSError, ValueError, KeyError):
                pass
            state = run_command(squeue_job_command(job_id)).strip()
            if not state or time.monotonic() > deadline:
                why = "ended" if not state else f"is still {state} after {timeout:g}s"
                raise _launch_error(
                    f"the scheduler job {job_id} of {self.name!r} {why} without writing "
                    f"{scheduler_file}; its log:\n{_tail(log)}"
                )
            time.sleep(0.5)
        record.scheduler_address = address
        record.save()
        return address

    @staticmethod
    def stop(record: Any) -> None:
        job_id = record.handles.get("scheduler_job")
        if job_id is not None:
            run_command(["scancel", job_id])
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and run_command(squeue_job_command(job_id)).strip():
                time.sleep(0.5)
        # The scheduler is gone: a worker job still there holds nothing. Cancel it now.
        run_command(scancel_commands(record.name, None)[-1])


# --------------------------------------------------------------------------- Docker


def compose_program() -> list[str]:
    """Debian's ``docker-compose`` when it is installed, else ``docker compose`` (the plugin).

    Docker Engine alone (Debian's docker.io) has neither: say so, rather than let ``docker``
    answer "unknown flag: --project-name".
    """
    if shutil.which("docker-compose") is not None:
        return ["docker-compose"]
    if shutil.which("docker") is not None:
        plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if plugin.returncode == 0:
            return ["docker", "compose"]
    raise CommandError(
        "the docker backend runs Docker Compose, and neither `docker compose` (the Compose "
        "plugin) nor `docker-compose` is installed here; install one (on Debian: "
        "apt-get install docker-compose)"
    )


def compose_command(name: str, compose_file: Path, *action: str) -> list[str]:
    """``docker compose --project-name NAME --file compose.yaml ACTION...``."""
    return [*compose_program(), "--project-name", name, "--file", str(compose_file), *action]


def worker_containers_command(name: str) -> list[str]:
    """Every container of the deployment's workers (by the labels the scaler gives them)."""
    return [
        "docker", "ps", "--all", "--quiet",
        "--filter", f"label=dask-deploy.deployment={name}",
        "--filter", "label=dask-deploy.role=worker",
    ]  # fmt: skip


def _listening(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, port)) == 0


class DockerLauncher(TemplatedLauncher):
    """``docker compose up --detach`` of the rendered compose.yaml (host network)."""

    backend = "docker"

    def launch(self, record: Any, timeout: float) -> str:
        compose_program()  # no Compose installed: say so before anything is written
        manifests = self.write(record.path)
        scheduler = self.resolved.values["scheduler"]
        tls = self.resolved.values["tls"]["enabled"]
        host, port = scheduler["host"], int(scheduler["port"])
        address = f"{'tls' if tls else 'tcp'}://{host}:{port}"
        if _listening(host, port):
            raise SettingsError(
                "scheduler.port", port, f"a port nothing listens on yet ({host}:{port} is taken)"
            )
        env = {}
        if self.resolved.values["docker"]["socket_gid"] is None:
            socket_path = Path(self.resolved.values["docker"]["socket"])
            env["DOCKER_SOCKET_GID"] = str(socket_path.stat().st_gid)
        record.handles["compose_file"] = str(manifests / "compose.yaml")
        record.handles["compose_env"] = env
        record.save()
        run_command(
            compose_command(self.name, manifests / "compose.yaml", "up", "--detach"), env=env
        )
        deadline = time.monotonic() + timeout
        while not _listening(host, port):
            if time.monotonic() > deadline:
                logs = run_command(
                    compose_command(self.name, manifests / "compose.yaml", "logs", "--tail", "20"),
                    env=env,
                )
                raise _launch_error(
                    f"the scheduler of {self.name!r} does not listen on {host}:{port} after "
                    f"{timeout:g}s; container logs:\n{logs}"
                )
            time.sleep(0.5)
        record.scheduler_address = address
        record.save()
        return address

    @staticmethod
    def stop(record: Any) -> None:
        compose_file = record.handles.get("compose_file")
        if compose_file is not None:
            env = record.handles.get("compose_env") or {}
            run_command(
                compose_command(record.name, Path(compose_file), "down", "--timeout", "30"),
                env=env,
            )
        left = run_command(worker_containers_command(record.name)).split()
        if left:
            run_command(["docker", "rm", "--force", "--volumes", *left])


# --------------------------------------------------------------------------- Marathon

#: Rendered apps in the order they are posted; deleted in reverse (the scaler first).
MARATHON_APPS = ("scheduler-app.json", "worker-app.json", "scaler-app.json")


def marathon_request(
    url: str, method: str, path: str, body: Mapping[str, Any] | None = None
) -> urllib.request.Request:
    """One request of Marathon's v2 API (built here, sent by :func:`send`)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url.rstrip('/')}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    return request


def send(request: urllib.request.Request) -> tuple[int, Any]:
    """Send ``request``; the status and the decoded JSON body (errors too, as Marathon's)."""
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")
    except urllib.error.URLError as error:
        raise CommandError(f"{request.full_url}: {error.reason}") from None


def scheduler_address_of(files: Mapping[str, str]) -> str:
    """The scheduler address the rendered scaler configuration connects to."""
    import yaml

    return str(yaml.safe_load(files["scaler-config.yaml"])["scheduler"]["address"])


class MarathonLauncher(TemplatedLauncher):
    """``POST /v2/apps`` of each rendered app, as templates/marathon/README.md says."""

    backend = "marathon"

    def launch(self, record: Any, timeout: float) -> str:
        self.write(record.path)
        url = str(self.resolved.values["marathon"]["url"])
        if self.resolved.values["marathon"]["credentials_file"] is not None:
            raise SettingsError(
                "marathon.credentials_file",
                self.resolved.values["marathon"]["credentials_file"],
                "null for `up` (post the rendered apps yourself when Marathon needs credentials)",
            )
        address = scheduler_address_of(self.files)
        record.handles["marathon_url"] = url
        record.handles["apps"] = []
        for name in MARATHON_APPS:
            app = json.loads(self.files[name])
            status, body = send(marathon_request(url, "POST", "/v2/apps", app))
            if status >= 300:
                raise CommandError(f"POST {url}/v2/apps ({name}) answered {status}: {body}")
            record.handles["apps"].append(app["id"])
            record.save()
        host, _, port = address.split("://", 1)[1].rpartition(":")
        deadline = time.monotonic() + timeout
        while not _listening(host, int(port)):
            if time.monotonic() > deadline:
                _, tasks = send(
                    marathon_request(url, "GET", f"/v2/apps{record.handles['apps'][0]}/tasks")
                )
                raise _launch_error(
                    f"the scheduler of {self.name!r} does not listen on {host}:{port} after "
                    f"{timeout:g}s; Marathon's tasks of it: {tasks}"
                )
            time.sleep(0.5)
        record.scheduler_address = address
        record.save()
        return address

    @staticmethod
    def stop(record: Any) -> None:
        url = record.handles.get("marathon_url")
        for app_id in reversed(record.handles.get("apps", [])):
            send(marathon_request(url, "DELETE", f"/v2/apps{app_id}?force=true"))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                status, _ = send(marathon_request(url, "GET", f"/v2/apps{app_id}"))
                if status == 404:
                    break
                time.sleep(0.5)


# --------------------------------------------------------------------------- Kubernetes


def kubernetes_objects(files: Mapping[str, str], namespace: str) -> list[dict[str, Any]]:
    """The rendered objects in the order kustomization.yaml lists them, in ``namespace``."""
    import yaml

    objects = []
    for name in yaml.safe_load(files["kustomization.yaml"])["resources"]:
        for document in yaml.safe_load_all(files[name]):
            if document:  # a file may render to nothing (the disruption budget when off)
                document["metadata"]["namespace"] = namespace
                objects.append(document)
    return objects


def api_class_name(api_version: str) -> str:
    """The official client's API class for ``api_version`` (``apps/v1`` -> ``AppsV1Api``),
    named as ``kubernetes.utils.create_from_dict`` names it."""
    group, _, version = api_version.partition("/")
    if not version:
        group, version = "core", group
    group = "".join(group.rsplit(".k8s.io", 1))
    return "".join(word.capitalize() for word in group.split(".")) + f"{version.capitalize()}Api"


def delete_method_name(kind: str) -> str:
    """``delete_namespaced_config_map`` for ``ConfigMap``."""
    return "delete_namespaced_" + re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower()


def scheduler_selector(name: str) -> str:
    """The label selector of the deployment's scheduler pod (the templates' labels)."""
    return f"app.kubernetes.io/instance={name},app.kubernetes.io/component=scheduler"


def scheduler_ended(pod: Any) -> str | None:
    """How the scheduler pod's ``scheduler`` container ended (now or before a restart), if it
    did: a crash-looping scheduler is reported at once, not after the timeout."""
    if pod.status.phase in ("Failed", "Succeeded"):
        return f"ended ({pod.status.phase})"
    for container in pod.status.container_statuses or []:
        if container.name != "scheduler":
            continue
        last = container.last_state.terminated if container.last_state else None
        terminated = container.state.terminated if container.state else None
        ended = terminated or last
        if ended is not None:
            return f"has a scheduler container that exited (exit code {ended.exit_code})"
    return None


def _kubernetes_client(kubeconfig: str | None) -> Any:
    """The official client, configured as kubectl is (``$KUBECONFIG``, else ~/.kube/config)."""
    config: Any = importlib.import_module("kubernetes.config")
    try:
        return config.new_client_from_config(config_file=kubeconfig)
    except config.ConfigException as error:
        raise SettingsError(
            "KUBECONFIG", kubeconfig or "~/.kube/config", f"a kubeconfig file ({error})"
        ) from None


def _api_error(action: str, error: Exception) -> CommandError:
    body = getattr(error, "body", None)
    try:
        message = json.loads(body)["message"] if body else str(error)
    except (ValueError, KeyError, TypeError):
        message = str(body)
    return CommandError(f"{action}: {message}")


class KubernetesLauncher(TemplatedLauncher):
    """Creates every rendered object through the API, as ``kubectl apply -k`` would.

    The address is the scheduler pod's IP (reachable from inside the cluster's network, where
    a notebook on the cluster runs; from elsewhere, ``kubectl port-forward`` the Service and
    connect a ``Client`` to the forwarded port).
    """

    backend = "kubernetes"

    def launch(self, record: Any, timeout: float) -> str:
        self.write(record.path)
        kubernetes: Any = importlib.import_module("kubernetes")
        kubeconfig = os.environ.get("KUBECONFIG")
        client = _kubernetes_client(kubeconfig)
        namespace = str(self.resolved.values["namespace"])
        record.handles |= {"kubeconfig": kubeconfig, "namespace": namespace, "objects": []}
        for obj in kubernetes_objects(self.files, namespace):
            what = f"{obj['kind']} {obj['metadata']['name']}"
            try:
                kubernetes.utils.create_from_dict(client, obj, namespace=namespace)
            except kubernetes.utils.FailToCreateError as error:
                raise _api_error(f"creating {what}", error.api_exceptions[0]) from None
            except kubernetes.client.ApiException as error:
                raise _api_error(f"creating {what}", error) from None
            record.handles["objects"].append(
                [obj["apiVersion"], obj["kind"], obj["metadata"]["name"]]
            )
            record.save()
        scheme = "tls" if self.resolved.values["tls"]["enabled"] else "tcp"
        port = int(self.resolved.values["scheduler"]["port"])
        core = kubernetes.client.CoreV1Api(client)
        deadline = time.monotonic() + timeout
        while True:
            pods = core.list_namespaced_pod(namespace, label_selector=scheduler_selector(self.name))
            running = [p for p in pods.items if p.status.phase == "Running" and p.status.pod_ip]
            if running and _listening(running[0].status.pod_ip, port):
                address = f"{scheme}://{running[0].status.pod_ip}:{port}"
                break
            ended = [why for p in pods.items if (why := scheduler_ended(p)) is not None]
            if ended or time.monotonic() > deadline:
                why = ended[0] if ended else f"is not up after {timeout:g}s"
                raise _launch_error(
                    f"the scheduler pod of {self.name!r} {why}; its log:\n"
                    + self._log_tail(core, namespace, pods.items)
                )
            time.sleep(0.5)
        record.scheduler_address = address
        record.save()
        return address

    @staticmethod
    def backend_options_here(record: Any, options: Mapping[str, Any]) -> dict[str, Any]:
        """The scaler reads its worker template from a mounted ConfigMap and reaches the API
        with its pod's token; here the template is the rendered one and the API is reached
        as kubectl reaches it. Listing needs no owner."""
        import yaml

        configmap = yaml.safe_load((record.path / MANIFESTS / "worker-configmap.yaml").read_text())
        template = record.path / "worker-pod.yaml"
        template.write_text(configmap["data"]["worker-pod.yaml"])
        kubeconfig = record.handles.get("kubeconfig") or str(Path.home() / ".kube" / "config")
        return {**options, "worker_template": str(template), "kubeconfig": kubeconfig,
                "namespace": record.handles["namespace"], "owner": None}  # fmt: skip

    @staticmethod
    def _log_tail(core: Any, namespace: str, pods: Sequence[Any]) -> str:
        if not pods:
            return "  (no scheduler pod was created)"
        name = pods[0].metadata.name
        try:
            text = core.read_namespaced_pod_log(
                name, namespace, container="scheduler", tail_lines=20
            )
        except Exception as error:  # the log is a courtesy: say why there is none
            return f"  (no log of pod {name}: {error})"
        return "\n".join(f"  | {line}" for line in str(text).splitlines())

    @staticmethod
    def stop(record: Any) -> None:
        objects = record.handles.get("objects") or []
        if not objects:
            return
        kubernetes: Any = importlib.import_module("kubernetes")
        client = _kubernetes_client(record.handles.get("kubeconfig"))
        namespace = record.handles["namespace"]
        # kubectl's default: the API deletes the dependents (the scheduler pod, and with it
        # the worker pods it owns) in the background.
        options = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        for api_version, kind, name in reversed(objects):
            api = getattr(kubernetes.client, api_class_name(api_version))(client)
            try:
                getattr(api, delete_method_name(kind))(name, namespace, body=options)
            except kubernetes.client.ApiException as error:
                if error.status != 404:
                    raise _api_error(f"deleting {kind} {name}", error) from None
        core = kubernetes.client.CoreV1Api(client)
        selector = f"app.kubernetes.io/instance={record.name}"
        deadline = time.monotonic() + 120
        while core.list_namespaced_pod(namespace, label_selector=selector).items:
            if time.monotonic() > deadline:
                raise CommandError(
                    f"pods labelled {selector} are still there 120s after their owners were "
                    "deleted (see `kubectl get pods -l ...`)"
                )
            time.sleep(0.5)


def _launch_error(message: str) -> UserInputError:
    from .lifecycle import LaunchError

    return LaunchError(message)


#: Templated backends that ``up`` and ``DeployCluster`` can launch.
LAUNCHERS: dict[str, type[TemplatedLauncher]] = {
    "docker": DockerLauncher,
    "kubernetes": KubernetesLauncher,
    "marathon": MarathonLauncher,
    "slurm": SlurmLauncher,
}
