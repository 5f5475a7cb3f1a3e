"""A Kubernetes API stand-in on 127.0.0.1: core/v1 pods, each run as a local process.

Point the official client (or kubectl) at it with the kubeconfig it writes::

    with KubernetesStandIn(workdir) as api:
        kubeconfig = api.write_kubeconfig(workdir / "kubeconfig")

or ``python -m dask_deploy.testing.kubernetes --port 6443``.

What it implements, with the real API's paths, JSON bodies, status codes and ``Status`` objects:
``/version``; ``GET``/``POST /api/v1/namespaces/{ns}/pods`` (list with ``labelSelector``,
equality and set-based; create, 409 AlreadyExists); ``GET``/``PUT``/``DELETE .../pods/{name}``
(404 NotFound; PUT and DELETE preconditions answer 409 Conflict on a stale ``resourceVersion``
or another ``uid``). Every object sent is validated with kubernetes-validate (strict, Kubernetes
:data:`KUBERNETES_VERSION`) and rejected with 422 Invalid. Optional RBAC: with ``allowed`` set,
any (verb, resource) outside it answers 403 Forbidden like the API server.

Admission, as the API server's ServiceAccount plugin does: a pod that does not set
``automountServiceAccountToken: false`` gets a ``kube-api-access-<suffix>`` projected volume (token,
``ca.crt``, namespace) mounted at :data:`TOKEN_PATH` in every container.

Scheduling, as kube-scheduler does on one node: a pod whose requests (limits where a request is
missing) do not fit the node's ``allocatable`` beside the pods already bound, or whose
``nodeSelector`` the node's labels do not match, stays Pending with the condition
``PodScheduled=False``, reason ``Unschedulable`` and kube-scheduler's message (``0/1 nodes are
available: 1 Insufficient cpu.``); pending pods are retried, oldest first, until they fit.

Each scheduled pod runs its containers' ``command`` + ``args`` (``$(VAR)`` expanded as the kubelet
does; without ``command``, the image's ENTRYPOINT from ``entrypoints``) as local processes with
the container's ``env``, including the downward API (``metadata.name``, ``metadata.namespace``,
``metadata.uid``, ``status.podIP``...). The phase
follows the processes: Pending, Running, then Succeeded or Failed (``restartPolicy: Never``;
a container is never restarted); ``containerStatuses`` say which container runs or ended
with which exit code. A container whose main process ends loses the rest of its processes at
once (its process group is SIGKILLed), as when a container's PID 1 exits.
Deleting sets ``deletionTimestamp``, SIGTERMs the main processes, SIGKILLs their process groups
after ``terminationGracePeriodSeconds`` and removes the pod once they are gone. Garbage collection:
pods whose ``ownerReferences`` name no existing object (pods, or objects registered with
:meth:`KubernetesStandIn.add_owner`) are deleted, as Kubernetes' garbage collector does.

Volumes: ``emptyDir``, ``secret`` and ``projected`` (``serviceAccountToken``, the
``kube-root-ca.crt`` ConfigMap, ``downwardAPI`` fields) volumes are made as folders under
``<workdir>/volumes/<pod>/`` (a Secret's keys as files, with ``items`` and
``defaultMode``/``mode``), and each container's ``volumeMounts`` map its mount path onto that
folder (:meth:`KubernetesStandIn.mounts`): the path is rewritten in the container's command,
args and env values (no mount namespace, the process runs on the host). Secrets are created as a
cluster admin would with ``kubectl create secret``: :meth:`KubernetesStandIn.create_secret`,
validated like pods; a pod whose Secret is missing stays Pending, as the kubelet leaves it.

Other objects, as ``kubectl apply`` of a rendered deployment sends them: ConfigMaps, Services and
ServiceAccounts (``/api/v1``), Deployments (``/apis/apps/v1``), Roles and RoleBindings
(``/apis/rbac.authorization.k8s.io/v1``) and PodDisruptionBudgets (``/apis/policy/v1``) are
created (validated like pods, 409 AlreadyExists), read, listed and deleted. A Deployment's
controller creates its ``replicas`` pods from its template once, owned by the Deployment (no
ReplicaSet object in between; a pod that ends is not replaced); deleting the Deployment lets
the garbage collector delete them. ``configMap`` volumes are mounted like Secrets.
``GET .../pods/{name}/log`` answers the pod's output (every container), ``tailLines`` honoured.

``isolated=True`` runs each container as a cluster would, so that in-cluster clients work
unchanged: in its own user and mount namespace (``unshare``) it sees its volumes at their
mount paths (nothing is rewritten) and an ``/etc/hosts`` that resolves every Service
(``<svc>``, ``<svc>.<ns>``, ``<svc>.<ns>.svc``, ``<svc>.<ns>.svc.cluster.local``) to the node,
where the pods listen (a Service must then target the same port number it serves); the API is
served over HTTPS with a CA of its own, which ``kube-root-ca.crt`` carries, and every container
gets ``KUBERNETES_SERVICE_HOST``/``_PORT``, as the kubelet sets them.

Limitations: images are never pulled; the command runs on the host, which needs the software the
image would have. Other volume types are not mounted; without ``isolated``, a mounted path
appearing inside a file the process reads is not rewritten; ``secretKeyRef``/``configMapKeyRef``
env is not resolved (the pod fails). Faults for tests: :meth:`KubernetesStandIn.inject`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import yaml

from ._groups import poll_group, signal_group
from ._mounts import map_mounts

log = logging.getLogger(__name__)

#: The Kubernetes version whose schemas validate every object (the oldest we support).
KUBERNETES_VERSION = "1.30.0"
#: Where the ServiceAccount admission mounts a pod's token, and in-cluster clients look for it.
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
#: The one node's allocatable resources and labels, unless the stand-in is given others.
NODE_ALLOCATABLE = {"cpu": "32", "memory": "128Gi", "ephemeral-storage": "100Gi", "pods": "110"}
NODE_LABELS = {"kubernetes.io/hostname": "stand-in", "kubernetes.io/os": "linux"}
_SUFFIX = "bcdfghjklmnpqrstvwxz2456789"
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")
_SUFFIXES = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_SUFFIXES |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "VIRTUAL_ENV")
_PODS = re.compile(r"^/api/v1/namespaces/([a-z0-9-]+)/pods(?:/([a-z0-9.-]+))?$")
_POD_LOG = re.compile(r"^/api/v1/namespaces/([a-z0-9-]+)/pods/([a-z0-9.-]+)/log$")
_OBJECTS = re.compile(
    r"^/(?:api/v1|apis/([a-z0-9.]+/v1))/namespaces/([a-z0-9-]+)/([a-z]+)(?:/([a-z0-9.-]+))?$"
)
#: The other resources served: resource -> (apiVersion, kind).
OBJECT_KINDS = {
    "configmaps": ("v1", "ConfigMap"),
    "services": ("v1", "Service"),
    "serviceaccounts": ("v1", "ServiceAccount"),
    "deployments": ("apps/v1", "Deployment"),
    "roles": ("rbac.authorization.k8s.io/v1", "Role"),
    "rolebindings": ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    "poddisruptionbudgets": ("policy/v1", "PodDisruptionBudget"),
}
#: Run inside a container's user and mount namespace (``isolated``): /etc and /run become
#: tmpfs copies of the host's (each entry bind-mounted back), so that mount points can be
#: made under them; every source is bound to a staging point first (a later mount may hide
#: it, e.g. one on /tmp), then onto its mount path. Arguments: a host folder for the
#: originals, the number of mounts, then (mount path, host path) pairs, then the command.
_ISOLATE = r"""
set -e
originals=$1; count=$2; shift 2
for top in /etc /run; do
  keep=$originals$top
  mkdir -p "$keep"
  mount --rbind "$top" "$keep"
  mount -t tmpfs tmpfs "$top"
  for entry in "$keep"/* "$keep"/.[!.]*; do
    [ -e "$entry" ] || [ -L "$entry" ] || continue
    name=${entry##*/}
    if [ -L "$entry" ]; then cp -P "$entry" "$top/$name"
    elif [ -d "$entry" ]; then mkdir -p "$top/$name"; mount --rbind "$entry" "$top/$name"
    else touch "$top/$name"; mount --bind "$entry" "$top/$name"; fi  # mount made /run/mount
  done
done
stage=/run/.stand-in-mounts
mkdir "$stage"
i=0
while [ $i -lt "$count" ]; do
  i=$((i + 1)); eval "target_$i=\$1"; source=$2; shift 2
  if [ -d "$source" ]; then mkdir "$stage/$i"; else touch "$stage/$i"; fi
  mount --bind "$source" "$stage/$i"
done
i=0
while [ $i -lt "$count" ]; do
  i=$((i + 1)); eval "target=\$target_$i"
  if [ -d "$stage/$i" ]; then mkdir -p "$target"; else [ -e "$target" ] || touch "$target"; fi
  mount --bind "$stage/$i" "$target"
done
exec "$@"
"""
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_VERBS = {("GET", False): "list", ("POST", False): "create", ("GET", True): "get"}
_VERBS |= {("PUT", True): "update", ("DELETE", True): "delete"}
_REASONS = {403: "Forbidden", 409: "Conflict", 429: "TooManyRequests", 503: "ServiceUnavailable"}


def _validate_delete_options(obj: dict[str, Any], version: str) -> None:
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    folder = f"kubernetes-json-schema/v{version}-local-strict"
    schema = utils.schema_contents(f"{folder}/deleteoptions-meta-v1.json", version)
    definitions = utils.schema_contents(f"{folder}/_definitions.json", version)
    registry: Registry[Any] = Resource.from_contents(definitions) @ Registry()
    jsonschema.Draft202012Validator(schema, registry=registry).validate(obj)


@dataclass
class _Fault:
    verb: str
    status: int | None
    reason: str
    message: str
    delay: float
    drop: bool
    times: int
    holding: int = 0  # requests of this fault being held right now


class DroppedConnection(Exception):
    """A fault's request is answered by closing the connection."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_object(code: int, reason: str, message: str, **details: str) -> dict[str, Any]:
    """A ``Status`` as the API server answers errors with."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}}
    body |= {"status": "Failure", "message": message, "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, **details: str) -> None:
        super().__init__(message)
        self.body = status_object(code, reason, message, **details)


def matches_selector(labels: Mapping[str, str], selector: str) -> bool:
    """Kubernetes label selector semantics: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``,
    ``a notin (x)``, ``a``, ``!a``, comma-joined (AND)."""
    for term in re.findall(r"(?:[^,(]|\([^)]*\))+", selector):
        term = term.strip()
        if match := re.fullmatch(r"(\S+?)\s*(==|=|!=)\s*(\S*)", term):
            key, op, value = match.groups()
            if (labels.get(key) == value) != (op != "!="):
                return False
        elif match := re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^)]*)\)", term):
            key, op, values = match.groups()
            inside = labels.get(key) in {v.strip() for v in values.split(",")}
            if inside != (op == "in"):
                return False
        elif match := re.fullmatch(r"(!?)([A-Za-z0-9./_-]+)", term):
            if (match.group(2) in labels) == (match.group(1) == "!"):
                return False
        else:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")
    return True


def quantity(text: str | int | float) -> float:
    """A Kubernetes quantity as a number: ``"500m"`` -> 0.5, ``"4Gi"`` -> 4294967296.

    >>> quantity("250m"), quantity("1Ki"), quantity(2)
    (0.25, 1024.0, 2.0)
    """
    match = _QUANTITY.match(str(text))
    if not match or match.group(2) not in _SUFFIXES:
        raise ValueError(f"not a quantity: {text!r}")
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


def pod_requests(spec: Mapping[str, Any]) -> dict[str, float]:
    """What a pod asks of a node: its containers' requests summed (a missing request defaults
    to the limit, as the API server does), at least each init container's, plus one pod."""

    def requests(container: Mapping[str, Any]) -> dict[str, float]:
        resources = container.get("resources") or {}
        asked = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        return {name: quantity(value) for name, value in asked.items()}

    total: dict[str, float] = {"pods": 1.0}
    for container in spec.get("containers", []):
        for name, value in requests(container).items():
            total[name] = total.get(name, 0.0) + value
    for container in spec.get("initContainers", []):
        for name, value in requests(container).items():
            total[name] = max(total.get(name, 0.0), value)
    return total


def unschedulable_message(
    wanted: Mapping[str, float],
    used: Mapping[str, float],
    allocatable: Mapping[str, float],
    selector_matches: bool,
) -> str | None:
    """kube-scheduler's message for a pod that fits no node (of one), or ``None`` if it fits.

    >>> unschedulable_message({"cpu": 3.0}, {"cpu": 2.0}, {"cpu": 4.0}, True)
    '0/1 nodes are available: 1 Insufficient cpu.'
    """
    if not selector_matches:
        reasons = ["node(s) didn't match Pod's node affinity/selector"]
    else:
        reasons = [
            "Too many pods" if name == "pods" else f"Insufficient {name}"
            for name, value in sorted(wanted.items())
            if value > 0 and used.get(name, 0.0) + value > allocatable.get(name, 0.0)
        ]
    if not reasons:
        return None
    return f"0/1 nodes are available: {', '.join(f'1 {r}' for r in sorted(reasons))}."


def expand(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion: known names replaced, ``$$`` is a literal ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REF.sub(replace, text)


def _mount_service_account_token(spec: dict[str, Any]) -> None:
    """The ServiceAccount admission plugin: unless the pod opts out, a projected token volume
    mounted read-only at :data:`TOKEN_PATH` in every container that has nothing there."""
    if spec.get("automountServiceAccountToken") is False:
        return
    spec.setdefault("serviceAccountName", "default")
    volume = "kube-api-access-" + "".join(_SUFFIX[b % len(_SUFFIX)] for b in os.urandom(5))
    namespace_field = {"apiVersion": "v1", "fieldPath": "metadata.namespace"}
    sources = [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": namespace_field}]}},
    ]
    spec.setdefault("volumes", []).append(
        {"name": volume, "projected": {"defaultMode": 420, "sources": sources}}
    )
    for container in spec.get("initContainers", []) + spec["containers"]:
        mounts = container.setdefault("volumeMounts", [])
        if all(mount["mountPath"] != TOKEN_PATH for mount in mounts):
            mounts.append({"name": volume, "mountPath": TOKEN_PATH, "readOnly": True})


def hidden_software(path_entries: Sequence[str], mount_paths: Sequence[str]) -> list[Path]:
    """The host folders that stand for the image's software (the container's ``PATH``, this
    Python's prefix and import path) which a volume's mount path would hide (``isolated``).

    An image keeps its software outside its volumes, but here the host's software is the
    image's: a checkout under /tmp (its virtualenv, its editable install) would vanish below the
    pods' /tmp emptyDir. These folders are bound back at their own paths over the volumes."""
    candidates = [*path_entries, sys.prefix, *sys.path]
    targets = [Path(m) for m in mount_paths]
    chosen: list[Path] = []
    for entry in sorted({Path(c) for c in candidates if c and os.path.isabs(c)}, key=str):
        if not entry.is_dir() or any(entry.is_relative_to(done) for done in chosen):
            continue
        if any(entry.is_relative_to(target) for target in targets):
            chosen.append(entry)
    return chosen


@dataclass
class _Pod:
    manifest: dict[str, Any]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    kill_at: float = 0.0
    #: Each container's mounts: mount path -> host folder.
    mounts: dict[str, dict[str, Path]] = field(default_factory=dict)

    @property
    def bound(self) -> bool:
        return bool(self.manifest["spec"].get("nodeName"))


class KubernetesStandIn:
    """The stand-in API server; a context manager that stops every process it started."""

    def __init__(
        self,
        workdir: Path,
        *,
        allowed: set[tuple[str, str]] | None = None,
        host_env: Mapping[str, str] | None = None,
        version: str = KUBERNETES_VERSION,
        port: int = 0,
        entrypoints: Mapping[str, Sequence[str]] | None = None,
        allocatable: Mapping[str, str] | None = None,
        node_labels: Mapping[str, str] | None = None,
        isolated: bool = False,
    ) -> None:
        """``entrypoints``: each image's ENTRYPOINT, run for a container without ``command``
        (no image is pulled; a container of another image without a command fails its pod).
        ``allocatable``/``node_labels``: the one node's, default :data:`NODE_ALLOCATABLE` and
        :data:`NODE_LABELS`. ``isolated``: see the module's docstring."""
        self.workdir = Path(workdir)
        self.isolated = isolated
        self.entrypoints = {image: list(argv) for image, argv in (entrypoints or {}).items()}
        self.allocatable = {
            name: quantity(value) for name, value in (allocatable or NODE_ALLOCATABLE).items()
        }
        self.node_labels = dict(node_labels or NODE_LABELS)
        #: False models a cluster without a free node: new pods stay Pending (Unschedulable,
        #: Insufficient cpu) until it is True again, as a real scheduler leaves them.
        self.schedulable = True
        self.allowed = allowed
        self.version = version
        self.host_env = dict(host_env or {k: os.environ[k] for k in _PASS_ENV if k in os.environ})
        self.calls: list[tuple[str, str]] = []
        #: Names of the pods created, and of those deleted through the API, in order.
        self.created: list[str] = []
        self.deleted: list[str] = []
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._secrets: dict[tuple[str, str], dict[str, Any]] = {}
        #: The other objects by (resource, namespace, name).
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._owners: set[str] = set()
        self._faults: list[_Fault] = []
        self._resource_version = 1000
        self._lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._closed = threading.Event()
        self._reaper = threading.Thread(target=self._reap_forever, daemon=True)

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        scheme = "https" if self.isolated else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    @property
    def ca_file(self) -> Path:
        """The CA of the HTTPS endpoint (``isolated`` only)."""
        return self.workdir / "api-ca.crt"

    def _serve_https(self) -> None:
        key = self.workdir / "api.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", str(key), "-out", str(self.ca_file), "-subj", "/CN=stand-in",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             "-addext", "basicConstraints=critical,CA:TRUE"],
            check=True, capture_output=True,
        )  # fmt: skip
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca_file, key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)

    def __enter__(self) -> KubernetesStandIn:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.isolated:
            probe = subprocess.run(
                ["unshare", "--user", "--map-root-user", "--mount", "true"],
                capture_output=True,
                text=True,
            )
            if probe.returncode != 0:
                raise RuntimeError(
                    "isolated=True needs unprivileged user namespaces (`unshare --user "
                    f"--map-root-user --mount true` failed: {probe.stderr.strip()})"
                )
            self._serve_https()
        self._thread.start()
        self._reaper.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server and kill every pod's processes."""
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:  # not while the reaper reaps (dask_deploy.testing._groups)
            pods = list(self._pods.values())
            for pod in pods:
                for process in pod.processes:
                    signal_group(process, signal.SIGKILL)
        for pod in pods:
            for process in pod.processes:
                process.wait()

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig whose current context reaches this server (no credentials needed)."""
        cluster: dict[str, str] = {"server": self.url}
        if self.isolated:
            cluster["certificate-authority"] = str(self.ca_file)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "stand-in", "cluster": cluster}],
            "users": [{"name": "stand-in", "user": {"token": "stand-in"}}],
            "contexts": [
                {
                    "name": "stand-in",
                    "context": {"cluster": "stand-in", "user": "stand-in", "namespace": namespace},
                }
            ],
            "current-context": "stand-in",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # -- test controls ---------------------------------------------------------------------
    def inject(
        self,
        verb: str,
        status: int | None = None,
        times: int = 1,
        reason: str = "",
        *,
        delay: float = 0.0,
        drop: bool = False,
        message: str = "injected fault",
    ) -> None:
        """Fail the next ``times`` calls of ``verb`` (create, list, delete, get, update).

        Each is held ``delay`` seconds, then answered with an error ``Status`` of ``status``;
        without a status it is dropped unanswered (``drop``) or served normally, late. Example::

            api.inject("list", 503, times=2)
            api.inject("create", delay=3.0)  # longer than the client waits: it gives up
            api.inject("delete", delay=3.0, drop=True)  # and there is no answer at all
        """
        if status is None and not delay and not drop:
            raise ValueError("a fault needs a status, a delay or drop=True")
        if status is not None and drop:
            raise ValueError("a dropped request has no status")
        reason = reason or _REASONS.get(status or 500, "InternalError")
        with self._lock:
            self._faults.append(_Fault(verb, status, reason, message, delay, drop, times))

    def pending_faults(self) -> int:
        """Injected failures not over yet: still to be served, or being held right now."""
        with self._lock:
            return sum(fault.times + fault.holding for fault in self._faults)

    def add_owner(self) -> str:
        """Register a foreign owner object (e.g. a ReplicaSet); returns its uid."""
        uid = str(uuid.uuid4())
        self._owners.add(uid)
        return uid

    def remove_owner(self, uid: str) -> None:
        """Delete a foreign owner: the garbage collector then deletes its dependents."""
        self._owners.discard(uid)

    def create_secret(self, secret: dict[str, Any], namespace: str = "default") -> None:
        """Store a Secret (validated like every object; ``stringData`` folded into ``data`` as
        the API server does); raises :class:`ApiError` 422/409 like ``kubectl create``."""
        self._validate(secret, "Secret")
        name = secret["metadata"]["name"]
        data = dict(secret.get("data") or {})
        for key, value in (secret.get("stringData") or {}).items():
            data[key] = base64.b64encode(value.encode()).decode()
        with self._lock:
            if (namespace, name) in self._secrets:
                raise ApiError(409, "AlreadyExists", f'secrets "{name}" already exists')
            self._secrets[(namespace, name)] = {**secret, "data": data}

    def objects(self, namespace: str = "default") -> list[tuple[str, str]]:
        """(kind, name) of every object other than pods and Secrets, in creation order."""
        with self._lock:
            return [
                (OBJECT_KINDS[resource][1], name)
                for resource, ns, name in self._objects
                if ns == namespace
            ]

    def pods(self, namespace: str = "default") -> dict[str, dict[str, Any]]:
        """A snapshot of the stored pods by name."""
        with self._lock:
            return {
                name: json.loads(json.dumps(pod.manifest))
                for (ns, name), pod in self._pods.items()
                if ns == namespace
            }

    def kill_containers(self, name: str, namespace: str = "default") -> None:
        """SIGKILL a pod's containers (every process they started), as the OOM killer would."""
        with self._lock:
            processes = list(self._find(namespace, name).processes)
            for process in processes:
                signal_group(process, signal.SIGKILL)

    def mounts(self, name: str, container: str, namespace: str = "default") -> dict[str, Path]:
        """A started pod's container's mounts: mount path -> the host folder behind it."""
        with self._lock:
            return dict(self._find(namespace, name).mounts.get(container, {}))

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    # -- the API -----------------------------------------------------------------------------
    def _next_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    def _validate(self, obj: Any, kind: str) -> None:
        import kubernetes_validate

        if not isinstance(obj, dict) or obj.get("kind") != kind:
            raise ApiError(400, "BadRequest", f"expected a {kind} object")
        try:
            if kind == "DeleteOptions":  # kubernetes-validate finds its schema under meta/v1 only
                _validate_delete_options(obj, self.version)
            else:
                kubernetes_validate.validate(obj, self.version, strict=True)
        except jsonschema.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            raise ApiError(422, "Invalid", f"{kind} is invalid: {path}: {error.message}") from None

    def handle(self, method: str, raw_path: str, body: Any) -> tuple[int, Any]:
        """Serve one request; returns the status code and the JSON body (a log: its text)."""
        url = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if method == "GET" and url.path == "/version":
            major, minor, _ = self.version.split(".")
            return 200, {"major": major, "minor": minor, "gitVersion": f"v{self.version}"}
        log_match = _POD_LOG.match(url.path)
        if method == "GET" and log_match:
            return self._pod_log(log_match.group(1), log_match.group(2), query)
        objects = _OBJECTS.match(url.path)
        if objects and objects.group(3) in OBJECT_KINDS:
            with self._lock:
                group, namespace, resource, name = objects.groups()
                return self._serve_object(method, group, namespace, resource, name, body)
        match = _PODS.match(url.path)
        verb = _VERBS.get((method, bool(match and match.group(2))))
        if not match or not verb:
            return 404, status_object(404, "NotFound", "the server could not find the resource")
        namespace, name = match.groups()
        with self._lock:
            self.calls.append((verb, "pods"))
            fault = self._take_fault(verb)
        try:
            if fault is not None:
                self._closed.wait(fault.delay)  # outside the lock: other calls go on meanwhile
                if fault.status is not None:
                    answer = status_object(fault.status, fault.reason, fault.message)
                    return fault.status, answer
                if fault.drop:
                    raise DroppedConnection(f"{verb} dropped after {fault.delay} s")
            with self._lock:
                return self._serve(verb, namespace, name, query, body)
        finally:
            if fault is not None:
                with self._lock:
                    fault.holding -= 1

    def _pod_log(self, namespace: str, name: str, query: dict[str, str]) -> tuple[int, Any]:
        with self._lock:
            try:
                self._find(namespace, name)
            except ApiError as error:
                return error.body["code"], error.body
        path = self.log_path(name)
        text = path.read_text(errors="replace") if path.is_file() else ""
        if "tailLines" in query:
            text = "".join(text.splitlines(keepends=True)[-int(query["tailLines"]) :])
        return 200, text

    def _serve_object(
        self, method: str, group: str | None, namespace: str, resource: str,
        name: str | None, body: Any,
    ) -> tuple[int, Any]:  # fmt: skip
        api_version, kind = OBJECT_KINDS[resource]
        if (group or "v1") != api_version:
            return 404, status_object(404, "NotFound", "the server could not find the resource")
        verb = _VERBS.get((method, name is not None))
        self.calls.append((verb or method, resource))
        key = (resource, namespace, name or "")
        try:
            if verb == "create":
                return 201, self._create_object(resource, namespace, body)
            if verb == "list":
                items = [o for (r, ns, _), o in self._objects.items() if (r, ns) == key[:2]]
                metadata = {"resourceVersion": str(self._resource_version)}
                return 200, {"kind": f"{kind}List", "apiVersion": api_version,
                             "metadata": metadata, "items": items}  # fmt: skip
            if key not in self._objects:
                message = f'{resource} "{name}" not found'
                raise ApiError(404, "NotFound", message, name=name or "", kind=resource)
            if verb == "get":
                return 200, self._objects[key]
            if verb == "delete":
                if body:
                    self._validate(body, "DeleteOptions")
                return 200, self._objects.pop(key)  # the garbage collector takes the rest
        except ApiError as error:
            return error.body["code"], error.body
        return 405, status_object(405, "MethodNotAllowed", f"{method} is not served here")

    def _create_object(self, resource: str, namespace: str, body: Any) -> dict[str, Any]:
        kind = OBJECT_KINDS[resource][1]
        self._validate(body, kind)
        metadata = body["metadata"]
        name = metadata.get("name")
        if metadata.get("namespace", namespace) != namespace or not name:
            raise ApiError(400, "BadRequest", "the namespace of the object does not match")
        if (resource, namespace, name) in self._objects:
            message = f'{resource} "{name}" already exists'
            raise ApiError(409, "AlreadyExists", message, name=name, kind=resource)
        metadata |= {"namespace": namespace, "uid": str(uuid.uuid4())}
        metadata |= {"creationTimestamp": _now(), "resourceVersion": self._next_version()}
        created: dict[str, Any] = body
        self._objects[(resource, namespace, name)] = created
        if kind == "Deployment":
            self._run_deployment(created)
        return created

    def _run_deployment(self, deployment: dict[str, Any]) -> None:
        """The Deployment controller, once: ``replicas`` pods from the template, owned by it."""
        metadata = deployment["metadata"]
        template = json.loads(json.dumps(deployment["spec"]["template"]))
        template_hash = uuid.uuid4().hex[:10]
        for _ in range(deployment["spec"].get("replicas", 1)):
            suffix = "".join(_SUFFIX[b % len(_SUFFIX)] for b in os.urandom(5))
            labels = {**template["metadata"].get("labels", {}), "pod-template-hash": template_hash}
            owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": metadata["name"],
                     "uid": metadata["uid"], "controller": True,
                     "blockOwnerDeletion": True}  # fmt: skip
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    **template["metadata"],
                    "name": f"{metadata['name']}-{template_hash}-{suffix}",
                    "labels": labels,
                    "ownerReferences": [owner],
                },
                "spec": template["spec"],
            }
            self._create(metadata["namespace"], None, None, pod)

    def _hosts_file(self, pod_name: str) -> Path:
        """The host's /etc/hosts, and every Service's names on the node (``isolated``)."""
        lines = [Path("/etc/hosts").read_text().rstrip("\n")]
        for (resource, namespace, name), _ in self._objects.items():
            if resource == "services":
                names = [name, f"{name}.{namespace}", f"{name}.{namespace}.svc"]
                lines.append(" ".join(["127.0.0.1", *names, f"{names[-1]}.cluster.local"]))
        path = self.volume_path(pod_name, ".hosts")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        return path

    def _take_fault(self, verb: str) -> _Fault | None:
        for fault in self._faults:
            if fault.verb == verb and fault.times > 0:
                fault.times -= 1
                fault.holding += 1
                return fault
        return None

    def _serve(
        self, verb: str, namespace: str, name: str | None, query: dict[str, str], body: Any
    ) -> tuple[int, dict[str, Any]]:
        if self.allowed is not None and (verb, "pods") not in self.allowed:
            message = (
                f'pods is forbidden: User "system:serviceaccount:{namespace}:scaler" cannot '
                f'{verb} resource "pods" in API group "" in the namespace "{namespace}"'
            )
            return 403, status_object(403, "Forbidden", message, kind="pods")
        try:
            answer: tuple[int, dict[str, Any]] = getattr(self, f"_{verb}")(
                namespace, name, query, body
            )
            return answer
        except ApiError as error:
            return error.body["code"], error.body

    def _list(self, namespace: str, _: None, query: dict[str, str], __: Any) -> tuple[int, Any]:
        selector = query.get("labelSelector", "")
        items = [
            pod.manifest
            for (ns, _name), pod in sorted(self._pods.items())
            if ns == namespace
            and matches_selector(pod.manifest["metadata"].get("labels", {}), selector)
        ]
        metadata = {"resourceVersion": str(self._resource_version)}
        return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": items}

    def _get(self, namespace: str, name: str, _: Any, __: Any) -> tuple[int, Any]:
        return 200, self._find(namespace, name).manifest

    def _find(self, namespace: str, name: str) -> _Pod:
        pod = self._pods.get((namespace, name))
        if pod is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found', name=name, kind="pods")
        return pod

    def _create(self, namespace: str, _: None, __: Any, body: Any) -> tuple[int, Any]:
        self._validate(body, "Pod")
        metadata = body["metadata"]
        name = metadata.get("name")
        if metadata.get("namespace", namespace) != namespace or not name:
            raise ApiError(400, "BadRequest", "the namespace of the object does not match")
        if (namespace, name) in self._pods:
            message = f'pods "{name}" already exists'
            raise ApiError(409, "AlreadyExists", message, name=name, kind="pods")
        metadata |= {"namespace": namespace, "uid": str(uuid.uuid4())}
        metadata |= {"creationTimestamp": _now(), "resourceVersion": self._next_version()}
        _mount_service_account_token(body["spec"])
        body["status"] = {"phase": "Pending", "qosClass": "Burstable"}
        pod = _Pod(body)
        self._pods[(namespace, name)] = pod
        self.created.append(name)
        self._schedule(pod)
        return 201, body

    # -- the scheduler -----------------------------------------------------------------------
    def _schedule(self, pod: _Pod) -> None:
        """Bind the pod to the node and start it if it fits; else leave it Pending, saying why."""
        used: dict[str, float] = {}
        for other in self._pods.values():
            if other.bound and other.manifest["status"]["phase"] not in ("Succeeded", "Failed"):
                for name, value in pod_requests(other.manifest["spec"]).items():
                    used[name] = used.get(name, 0.0) + value
        spec = pod.manifest["spec"]
        selector = spec.get("nodeSelector") or {}
        matches = all(self.node_labels.get(k) == v for k, v in selector.items())
        message = unschedulable_message(pod_requests(spec), used, self.allocatable, matches)
        if not self.schedulable:
            message = "0/1 nodes are available: 1 Insufficient cpu."
        status = pod.manifest["status"]
        condition = {"type": "PodScheduled", "lastProbeTime": None, "lastTransitionTime": _now()}
        if message is not None:
            condition |= {"status": "False", "reason": "Unschedulable", "message": message}
            old: dict[str, Any] = next(
                (c for c in status.get("conditions", []) if c["type"] == "PodScheduled"), {}
            )
            if old.get("message") != message:
                status["conditions"] = [condition]
                pod.manifest["metadata"]["resourceVersion"] = self._next_version()
            return
        spec["nodeName"] = "stand-in"
        status["conditions"] = [condition | {"status": "True"}]
        self._start(pod)

    def _schedule_pending(self) -> None:
        """Retry the pods still unscheduled, oldest first (capacity may have been freed)."""
        waiting = [
            pod
            for pod in self._pods.values()
            if not pod.bound and not pod.manifest["metadata"].get("deletionTimestamp")
        ]
        for pod in waiting:  # the dict keeps creation order
            self._schedule(pod)

    def _update(self, namespace: str, name: str, _: Any, body: Any) -> tuple[int, Any]:
        self._validate(body, "Pod")
        pod = self._find(namespace, name)
        sent = body["metadata"].get("resourceVersion")
        if sent != pod.manifest["metadata"]["resourceVersion"]:
            message = (
                f'Operation cannot be fulfilled on pods "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again"
            )
            raise ApiError(409, "Conflict", message, name=name, kind="pods")
        pod.manifest["metadata"]["labels"] = body["metadata"].get("labels", {})
        pod.manifest["metadata"]["annotations"] = body["metadata"].get("annotations", {})
        pod.manifest["metadata"]["resourceVersion"] = self._next_version()
        return 200, pod.manifest

    def _delete(self, namespace: str, name: str, _: Any, body: Any) -> tuple[int, Any]:
        if body:
            self._validate(body, "DeleteOptions")
        pod = self._find(namespace, name)
        metadata = pod.manifest["metadata"]
        for key in ("uid", "resourceVersion"):
            wanted = ((body or {}).get("preconditions") or {}).get(key)
            if wanted is not None and wanted != metadata[key]:
                message = (
                    f"Precondition failed: {key} in precondition: {wanted}, "
                    f"{key} in object meta: {metadata[key]}"
                )
                raise ApiError(409, "Conflict", message, name=name, kind="pods")
        if not metadata.get("deletionTimestamp"):
            self.deleted.append(name)
        self._terminate(pod, (body or {}).get("gracePeriodSeconds"))
        return 200, pod.manifest

    # -- the kubelet and the garbage collector ---------------------------------------------
    def _terminate(self, pod: _Pod, grace: int | None) -> None:
        metadata = pod.manifest["metadata"]
        if metadata.get("deletionTimestamp"):
            return
        if grace is None:
            grace = pod.manifest["spec"].get("terminationGracePeriodSeconds", 30)
        metadata |= {"deletionTimestamp": _now(), "deletionGracePeriodSeconds": grace}
        metadata["resourceVersion"] = self._next_version()
        pod.kill_at = time.monotonic() + grace
        for process in pod.processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)  # PID 1 only, as a container runtime does

    def _fields(self, pod: dict[str, Any]) -> dict[str, str]:
        """What the downward API can tell a container about its pod."""
        return {
            "metadata.name": pod["metadata"]["name"],
            "metadata.namespace": pod["metadata"]["namespace"],
            "metadata.uid": pod["metadata"]["uid"],
            "spec.nodeName": "stand-in",
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
            "status.podIP": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
        }

    def _container_env(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        fields = self._fields(pod)
        env: dict[str, str] = {}
        if self.isolated:  # the kubelet's, even with enableServiceLinks: false
            port = str(self._server.server_address[1])
            env |= {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port}
        for variable in container.get("env", []):
            if "value" in variable:
                env[variable["name"]] = expand(variable["value"], env)
            elif "fieldRef" in (variable.get("valueFrom") or {}):
                env[variable["name"]] = fields[variable["valueFrom"]["fieldRef"]["fieldPath"]]
            else:
                raise ValueError(f"env {variable['name']}: only value and fieldRef are supported")
        return env

    def volume_path(self, pod_name: str, volume: str) -> Path:
        """The host folder behind a pod's volume."""
        return self.workdir / "volumes" / pod_name / volume

    def _make_volumes(self, manifest: dict[str, Any]) -> dict[str, Path]:
        """The pod's emptyDir and secret volumes as folders, by volume name; raises LookupError
        naming a missing Secret (the kubelet then keeps the pod Pending)."""
        namespace, pod_name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        folders: dict[str, Path] = {}
        for volume in manifest["spec"].get("volumes", []):
            folder = self.volume_path(pod_name, volume["name"])
            if "emptyDir" in volume:
                folder.mkdir(parents=True, exist_ok=True)
            elif "secret" in volume:
                source = volume["secret"]
                secret = self._secrets.get((namespace, source["secretName"]))
                if secret is None:
                    if source.get("optional"):
                        continue
                    raise LookupError(f'secret "{source["secretName"]}" not found')
                data = secret["data"]
                items = source.get("items") or [{"key": key, "path": key} for key in data]
                folder.mkdir(parents=True, exist_ok=True)
                for item in items:
                    target = folder / item["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(base64.b64decode(data[item["key"]]))
                    target.chmod(item.get("mode", source.get("defaultMode", 0o644)))
            elif "configMap" in volume:
                source = volume["configMap"]
                found = self._objects.get(("configmaps", namespace, source["name"]))
                if found is None:
                    if source.get("optional"):
                        continue
                    raise LookupError(f'configmap "{source["name"]}" not found')
                data = found.get("data") or {}
                items = source.get("items") or [{"key": key, "path": key} for key in data]
                folder.mkdir(parents=True, exist_ok=True)
                for item in items:
                    target = folder / item["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(data[item["key"]])
                    target.chmod(item.get("mode", source.get("defaultMode", 0o644)))
            elif "projected" in volume:
                folder.mkdir(parents=True, exist_ok=True)
                for path, text in self._projected_files(manifest, volume["projected"]).items():
                    (folder / path).parent.mkdir(parents=True, exist_ok=True)
                    (folder / path).write_text(text)
            else:
                continue  # not mounted (see Limitations)
            folders[volume["name"]] = folder
        return folders

    def _projected_files(
        self, manifest: dict[str, Any], projected: Mapping[str, Any]
    ) -> dict[str, str]:
        """The files of a projected volume: the token, the cluster CA, downward API fields."""
        fields = self._fields(manifest)
        files: dict[str, str] = {}
        for source in projected.get("sources", []):
            if "serviceAccountToken" in source:
                account = manifest["spec"].get("serviceAccountName", "default")
                files[source["serviceAccountToken"]["path"]] = f"stand-in-token-for-{account}"
            elif (source.get("configMap") or {}).get("name") == "kube-root-ca.crt":
                # The root CA publisher puts this ConfigMap in every namespace.
                ca = self.ca_file.read_text() if self.isolated else "stand-in: plain HTTP, no CA\n"
                for item in source["configMap"].get("items") or [{"key": "ca.crt"}]:
                    files[item.get("path", item["key"])] = ca
            elif "downwardAPI" in source:
                for item in source["downwardAPI"]["items"]:
                    files[item["path"]] = fields[item["fieldRef"]["fieldPath"]]
            elif not (source.get("configMap") or source.get("secret") or {}).get("optional"):
                raise LookupError(f"projected source {sorted(source)} is not modelled")
        return files

    def _start(self, pod: _Pod) -> None:
        manifest = pod.manifest
        try:
            volumes = self._make_volumes(manifest)
        except LookupError as error:
            message = f"MountVolume.SetUp failed: {error.args[0]}"
            manifest["status"] |= {"reason": "ContainerCreating", "message": message}
            return
        try:
            with self.log_path(manifest["metadata"]["name"]).open("ab") as log_file:
                for container in manifest["spec"]["containers"]:
                    command = container.get("command") or self.entrypoints.get(container["image"])
                    if not command:
                        raise ValueError(
                            f"container {container['name']}: no command, and the image "
                            f"{container['image']}'s entrypoint is not known (no images here)"
                        )
                    mounts = {
                        m["mountPath"]: volumes[m["name"]] / m.get("subPath", "")
                        for m in container.get("volumeMounts", [])
                        if m["name"] in volumes
                    }
                    pod.mounts[container["name"]] = mounts
                    env = self._container_env(manifest, container)
                    argv = [expand(a, env) for a in list(command) + container.get("args", [])]
                    if self.isolated:
                        mounts["/etc/hosts"] = self._hosts_file(manifest["metadata"]["name"])
                        path = {**self.host_env, **env}.get("PATH", "")
                        software = hidden_software(path.split(os.pathsep), list(mounts))
                        bound = {**mounts, **{str(p): p for p in software}}  # after the volumes
                        pairs = [str(part) for item in bound.items() for part in item]
                        originals = self.workdir / "originals"
                        argv = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                                _ISOLATE, "isolate", str(originals), str(len(bound)),
                                *pairs, *argv]  # fmt: skip
                    else:  # no mount namespace: the paths are rewritten instead
                        env = {name: map_mounts(value, mounts) for name, value in env.items()}
                        argv = [map_mounts(a, mounts) for a in argv]
                    process = subprocess.Popen(
                        argv,
                        env={**self.host_env, "HOSTNAME": manifest["metadata"]["name"], **env},
                        cwd=self.workdir,
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                    pod.processes.append(process)
        except (OSError, ValueError) as error:
            manifest["status"] |= {"phase": "Failed", "message": str(error)}
            return
        manifest["status"] |= {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "hostIP": "127.0.0.1",
            "startTime": _now(),
            "containerStatuses": [
                {"name": c["name"], "image": c["image"], "imageID": "", "ready": True,
                 "restartCount": 0, "started": True, "state": {"running": {"startedAt": _now()}}}
                for c in manifest["spec"]["containers"]
            ],
        }  # fmt: skip
        manifest["metadata"]["resourceVersion"] = self._next_version()

    def _reap_forever(self) -> None:
        while not self._closed.wait(0.1):
            with self._lock:
                self._reap()
                self._schedule_pending()

    def _reap(self) -> None:
        """Phases follow the processes; terminated pods go away; orphans are collected."""
        for key, pod in list(self._pods.items()):
            manifest = pod.manifest
            codes = [poll_group(process) for process in pod.processes]
            for container, code in zip(
                manifest["status"].get("containerStatuses") or [], codes, strict=False
            ):
                if code is not None and "running" in container["state"]:
                    started = container["state"]["running"]["startedAt"]
                    reason = "Completed" if code == 0 else "Error"
                    container["state"] = {"terminated": {"exitCode": code, "reason": reason,
                                          "startedAt": started, "finishedAt": _now()}}  # fmt: skip
                    container |= {"ready": False, "started": False}
                    manifest["metadata"]["resourceVersion"] = self._next_version()
            if manifest["status"]["phase"] == "Running" and None not in codes:
                phase = "Succeeded" if not any(codes) else "Failed"
                manifest["status"]["phase"] = phase
                manifest["metadata"]["resourceVersion"] = self._next_version()
            if manifest["metadata"].get("deletionTimestamp"):
                if None in codes and time.monotonic() >= pod.kill_at:
                    for process in pod.processes:
                        signal_group(process, signal.SIGKILL)
                elif None not in codes:
                    del self._pods[key]
                    shutil.rmtree(self.workdir / "volumes" / key[1], ignore_errors=True)
        existing = self._owners | {p.manifest["metadata"]["uid"] for p in self._pods.values()}
        existing |= {o["metadata"]["uid"] for o in self._objects.values()}
        for pod in self._pods.values():
            references = pod.manifest["metadata"].get("ownerReferences") or []
            if references and not any(ref["uid"] in existing for ref in references):
                self._terminate(pod, None)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                answer: Any
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    code, answer = 400, status_object(400, "BadRequest", "body is not JSON")
                else:
                    try:
                        code, answer = stand_in.handle(self.command, self.path, body)
                    except DroppedConnection:
                        self.close_connection = True
                        return
                text = isinstance(answer, str)  # a pod's log
                data = answer.encode() if text else json.dumps(answer).encode()
                # A client that gave up on a held request has closed its end.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(code)
                    self.send_header("Content-Type", "text/plain" if text else "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("kubernetes stand-in: " + format, *args)

        return Handler


@contextlib.contextmanager
def running(workdir: Path, **kwargs: Any) -> Iterator[KubernetesStandIn]:
    """Start a stand-in for the duration of a ``with`` block."""
    with KubernetesStandIn(workdir, **kwargs) as stand_in:
        yield stand_in


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=6443)
    parser.add_argument("--workdir", type=Path, default=Path("k8s-stand-in"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    with running(args.workdir, port=args.port) as stand_in:
        print(f"kubeconfig: {stand_in.write_kubeconfig(args.workdir / 'kubeconfig')}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
