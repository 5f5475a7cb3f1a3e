"""Kubernetes: every worker is one pod the scaler creates, named by the pod name.

Options (``backend.options`` in the scaler configuration)::

    worker_template: /etc/dask-deploy/worker/worker-pod.yaml  # required: the rendered worker Pod
    namespace: null          # optional: null = the scaler pod's own namespace (in-cluster), the
                             # kubeconfig context's namespace, or "default"
    kubeconfig: null         # optional: a kubeconfig file (development); null = in-cluster account
    context: null            # optional: the kubeconfig context; null = its current context
    owner: null              # optional: {api_version, kind, name, uid} owning every worker pod;
                             # "${VAR}" in a value is read from the environment (downward API)
    request_timeout: 10      # optional: seconds one HTTP request may take (one attempt)
    retry_for: 1             # optional: seconds one call keeps retrying 409 Conflict / 5xx / no
                             # answer; about one scaler interval, as the loop retries after that

Workers are bare pods, not a Deployment's: ``scale_down`` deletes exactly the pods whose workers
the scheduler retired, and no controller recreates them or picks another victim. The owner
reference (the scheduler pod) makes Kubernetes garbage-collect the workers with the scheduler.
Each pod runs ``dask worker --name $(DASK_WORKER_NAME)`` with that variable set from
``metadata.name`` (downward API), so ``Instance.name`` is the pod name. A pod whose worker has
ended (phase Succeeded or Failed: killed, crashed, gone with the scheduler, or retired while its
delete failed) holds nothing any more: ``scale_up`` and ``scale_down`` delete such pods, logging
how they ended, so they do not pile up (no controller would collect them). ``instances`` only
lists, so a dry run changes nothing.

Retrying is the control loop's job (level-triggered, at its interval): a call retries only
briefly (``retry_for``) and one request never waits longer than ``request_timeout``.

Requests are built by pure functions from :data:`RBAC_RULES`, the one list of (verb, resource)
the rendered Role grants; :meth:`KubernetesBackend._send` is the one place that sends them, through
the official client in a thread (it is synchronous).
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import json
import logging
import os
import secrets
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from .._errors import SettingsError
from ..contract import Backend, BackendContext, Instance, InstanceState, count_requested
from ..options import BACKEND_OPTIONS, reject_unknown
from ._retry import retry_with_backoff

log = logging.getLogger(__name__)

#: Every (verb, resource) the backend uses; the rendered Role grants exactly these.
RBAC_RULES: tuple[tuple[str, str], ...] = (("create", "pods"), ("delete", "pods"), ("list", "pods"))
_HTTP_METHODS = {"create": "POST", "delete": "DELETE", "list": "GET"}
_OPTIONS = {
    "worker_template",
    "namespace",
    "kubeconfig",
    "context",
    "owner",
    "request_timeout",
    "retry_for",
}
_OWNER_KEYS = ("api_version", "kind", "name", "uid")
# The alphabet Kubernetes uses for generated name suffixes: no vowels, no look-alikes.
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
#: A waiting container's reasons that the pod template causes (a bad image name or reference, a
#: missing Secret or ConfigMap): more pods from it would wait the same way.
STUCK_WAITING_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"}
)
_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class KubernetesSettings:
    """The backend's options, validated once."""

    deployment: str
    namespace: str
    worker_template: Mapping[str, Any]
    owner: Mapping[str, str] | None = None
    kubeconfig: str | None = None
    context: str | None = None
    request_timeout: float = 10.0
    retry_for: float = 1.0


@dataclass(frozen=True)
class Request:
    """One API call: the RBAC verb and resource it needs, and the HTTP request that makes it."""

    verb: str
    resource: str
    path: str
    query: tuple[tuple[str, str], ...] = ()
    body: Mapping[str, Any] | None = field(default=None, hash=False)

    @property
    def method(self) -> str:
        return _HTTP_METHODS[self.verb]


class KubernetesApiError(RuntimeError):
    """The API answered with an error Status (or not at all: ``status`` 0)."""

    def __init__(self, request: Request, status: int, reason: str, message: str) -> None:
        self.status, self.reason = status, reason
        super().__init__(f"{request.method} {request.path}: {status} {reason}: {message}")


class KubernetesPermissionError(KubernetesApiError):
    """403 from RBAC: the scaler's service account lacks a verb on a resource."""


def selector_labels(deployment: str) -> dict[str, str]:
    """The labels that mark a worker pod of this deployment (and select it when listing)."""
    return {
        "app.kubernetes.io/instance": deployment,
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/managed-by": "dask-deploy",
    }


def worker_pod_name(deployment: str, suffix: str | None = None) -> str:
    """``<deployment>-worker-<5 random characters>``, like a name Kubernetes generates.

    >>> worker_pod_name("dask", "x7k2q")
    'dask-worker-x7k2q'
    """
    suffix = suffix or "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(5))
    return f"{deployment}-worker-{suffix}"


def worker_pod(settings: KubernetesSettings, name: str) -> dict[str, Any]:
    """The worker template with this pod's name, namespace, labels and owner reference."""
    pod = copy.deepcopy(dict(settings.worker_template))
    metadata = dict(pod.get("metadata") or {})
    metadata.pop("generateName", None)
    metadata["name"] = name
    metadata["namespace"] = settings.namespace
    metadata["labels"] = {**(metadata.get("labels") or {}), **selector_labels(settings.deployment)}
    if settings.owner is not None:
        # No blockOwnerDeletion: it would need update on the owner's finalizers.
        metadata["ownerReferences"] = [
            {
                "apiVersion": settings.owner["api_version"],
                "kind": settings.owner["kind"],
                "name": settings.owner["name"],
                "uid": settings.owner["uid"],
                "controller": True,
            }
        ]
    pod["metadata"] = metadata
    return pod


def _pods_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods"


def create_request(settings: KubernetesSettings, name: str) -> Request:
    """POST one worker pod."""
    return Request("create", "pods", _pods_path(settings.namespace), (), worker_pod(settings, name))


def list_request(settings: KubernetesSettings) -> Request:
    """GET this deployment's worker pods by label selector."""
    selector = ",".join(f"{k}={v}" for k, v in selector_labels(settings.deployment).items())
    return Request("list", "pods", _pods_path(settings.namespace), (("labelSelector", selector),))


def delete_request(settings: KubernetesSettings, name: str) -> Request:
    """DELETE one pod; it gets its own terminationGracePeriodSeconds to stop."""
    body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
    return Request("delete", "pods", f"{_pods_path(settings.namespace)}/{name}", (), body)


def pod_state(pod: Mapping[str, Any]) -> InstanceState:
    """Pending -> pending; Running (and Unknown) -> running; ended or terminating -> exited."""
    phase = (pod.get("status") or {}).get("phase", "Pending")
    if pod["metadata"].get("deletionTimestamp") or phase in ("Succeeded", "Failed"):
        return InstanceState.EXITED
    return InstanceState.PENDING if phase == "Pending" else InstanceState.RUNNING


def ended_pods(pod_list: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Pods whose containers have all ended (Succeeded, Failed) and that are not being deleted."""
    return [
        pod
        for pod in pod_list.get("items") or []
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        and not pod["metadata"].get("deletionTimestamp")
    ]


def how_it_ended(pod: Mapping[str, Any]) -> str:
    """``Failed: worker exit code 137 (OOMKilled)``: the phase and each container's end."""
    status = pod.get("status") or {}
    ends = []
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        if "exitCode" in terminated:
            reason = f" ({terminated['reason']})" if terminated.get("reason") else ""
            ends.append(f"{container.get('name')} exit code {terminated['exitCode']}{reason}")
    return str(status.get("phase", "ended")) + (": " + ", ".join(ends) if ends else "")


def pending_reason(pod: Mapping[str, Any]) -> str | None:
    """Why a pending pod cannot start, in Kubernetes' words; ``None`` if nothing holds it back.

    kube-scheduler's ``PodScheduled=False`` condition (``Unschedulable: 0/3 nodes are available:
    3 Insufficient cpu.``), or a container the kubelet cannot create from this template
    (:data:`STUCK_WAITING_REASONS`). Another pod from the same template would be stuck the same
    way, so the loop neither replaces such a pod nor adds more beside it.
    """
    if pod_state(pod) is not InstanceState.PENDING:
        return None
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"{condition.get('reason') or 'Unschedulable'}: {condition.get('message', '')}"
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_WAITING_REASONS:
            return f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
    return None


def parse_pods(pod_list: Mapping[str, Any]) -> list[Instance]:
    """Instances from a PodList, ordered by name, pending ones with the reason they wait."""
    instances = []
    for pod in pod_list.get("items") or []:
        created = pod["metadata"].get("creationTimestamp")
        requested_at = datetime.fromisoformat(created).timestamp() if created else 0.0
        name, state, reason = pod["metadata"]["name"], pod_state(pod), pending_reason(pod)
        instances.append(Instance(name, state, requested_at, reason))
    return sorted(instances, key=lambda instance: instance.name)


def api_error(request: Request, status: int, body: bytes) -> KubernetesApiError:
    """The error for a non-2xx answer, in the API's own words (its Status message).

    A 403 is not always RBAC: a ResourceQuota (``exceeded quota: ...``) and admission (Pod
    Security, policy webhooks: ``violates PodSecurity ...``) answer 403 Forbidden too. Only an
    RBAC denial (``User "..." cannot create resource "pods" ...``) adds which grant is missing.
    """
    try:
        status_object = json.loads(body)
        reason, message = status_object.get("reason", ""), status_object.get("message", "")
    except (ValueError, AttributeError):
        reason, message = "", body.decode(errors="replace")[:200]
    if status == 403 and f'cannot {request.verb} resource "{request.resource}"' in message:
        message = (
            f"{message} (the scaler's service account may not {request.verb} "
            f'{request.resource}: grant verb "{request.verb}" on resource "{request.resource}" '
            "in its Role)"
        )
        return KubernetesPermissionError(request, status, reason or "Forbidden", message)
    return KubernetesApiError(
        request, status, reason or ("Forbidden" if status == 403 else ""), message
    )


def is_retryable(error: KubernetesApiError) -> bool:
    """No answer, 409 Conflict (not AlreadyExists) and 5xx are worth another try."""
    return error.status == 0 or error.status >= 500 or error.reason == "Conflict"


def _option(options: Mapping[str, object], key: str, kind: type, allowed: str) -> Any:
    value = options.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise SettingsError(f"backend.options.{key}", value, allowed)
    return value


def _load_owner(value: object) -> Mapping[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) != set(_OWNER_KEYS):
        raise SettingsError("backend.options.owner", value, f"null or a mapping of {_OWNER_KEYS}")
    owner = {}
    for key in _OWNER_KEYS:
        expanded = os.path.expandvars(str(value[key]))
        if not expanded or "$" in expanded:
            allowed = "a non-empty string (set the environment variables it names)"
            raise SettingsError(f"backend.options.owner.{key}", value[key], allowed)
        owner[key] = expanded
    return owner


def _default_namespace(kubeconfig: str | None, context: str | None) -> str:
    if kubeconfig is not None:
        config: Any = importlib.import_module("kubernetes.config")
        contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)
        chosen = next((c for c in contexts if c["name"] == context), current)
        return str((chosen or {}).get("context", {}).get("namespace") or "default")
    if _SERVICE_ACCOUNT_NAMESPACE.is_file():
        return _SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    return "default"


def load_settings(context: BackendContext) -> KubernetesSettings:
    """Validate ``backend.options``; raise :class:`SettingsError` naming the bad key."""
    options = dict(context.options)
    reject_unknown(options, _OPTIONS, prefix=BACKEND_OPTIONS)
    template_path = options.get("worker_template")
    allowed = "the path of a YAML file holding one v1 Pod manifest with spec.containers"
    try:
        template = yaml.safe_load(Path(str(template_path)).read_text())
    except (OSError, yaml.YAMLError):
        raise SettingsError("backend.options.worker_template", template_path, allowed) from None
    if not isinstance(template, dict) or template.get("kind") != "Pod" or template_path is None:
        raise SettingsError("backend.options.worker_template", template_path, allowed)
    if not (template.get("spec") or {}).get("containers"):
        raise SettingsError("backend.options.worker_template", template_path, allowed)
    kubeconfig = _option(options, "kubeconfig", str, "null or the path of a kubeconfig file")
    if kubeconfig is not None and not Path(kubeconfig).is_file():
        raise SettingsError("backend.options.kubeconfig", kubeconfig, "an existing kubeconfig file")
    kube_context = _option(options, "context", str, "null or a kubeconfig context name")
    namespace = _option(options, "namespace", str, "null or a namespace name")
    numbers = {}
    for key, default in (("request_timeout", 10.0), ("retry_for", 1.0)):
        value = options.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise SettingsError(f"backend.options.{key}", value, "a number of seconds > 0")
        numbers[key] = float(value)
    return KubernetesSettings(
        deployment=context.deployment,
        namespace=namespace or _default_namespace(kubeconfig, kube_context),
        worker_template=template,
        owner=_load_owner(options.get("owner")),
        kubeconfig=kubeconfig,
        context=kube_context,
        **numbers,
    )


def api_client(settings: KubernetesSettings) -> Any:
    """The official client: from the kubeconfig if one is given, else the pod's service account."""
    client: Any = importlib.import_module("kubernetes.client")
    config: Any = importlib.import_module("kubernetes.config")
    configuration = client.Configuration()
    if settings.kubeconfig is not None:
        config.load_kube_config(
            config_file=settings.kubeconfig,
            context=settings.context,
            client_configuration=configuration,
            persist_config=False,
        )
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException as error:
            allowed = f"a kubeconfig file when not running in a pod ({error})"
            raise SettingsError("backend.options.kubeconfig", None, allowed) from None
    # One attempt per request: urllib3 would otherwise retry a read 3 more times, so a hung
    # API server held a call for 4 x request_timeout. Retrying is _send's job, within retry_for.
    configuration.retries = 0
    return client.ApiClient(configuration)


class KubernetesBackend:
    """Creates, lists and deletes one deployment's worker pods."""

    def __init__(
        self,
        settings: KubernetesSettings,
        client: Any,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self._client = client
        self._sleep = sleep

    def _send_once(self, request: Request) -> Any:
        method, url, headers, body, _ = self._client.param_serialize(
            method=request.method,
            resource_path=request.path,
            query_params=list(request.query),
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=request.body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._client.call_api(
                method, url, header_params=headers, body=body,
                _request_timeout=self.settings.request_timeout,
            )  # fmt: skip
            response.read()
        except Exception as error:  # urllib3 and the client raise several types for "no answer"
            cause = getattr(error, "reason", None)  # urllib3's MaxRetryError wraps the real one
            shown = cause if isinstance(cause, Exception) else error
            raise KubernetesApiError(request, 0, type(shown).__name__, str(shown)) from error
        if not 200 <= response.status <= 299:
            raise api_error(request, response.status, response.data or b"")
        return json.loads(response.data or b"{}")

    async def _send(self, request: Request) -> Any:
        """Send in a thread; back off and retry 409 Conflict / 5xx / no answer until retry_for."""
        return await retry_with_backoff(
            lambda: asyncio.to_thread(self._send_once, request),
            is_retryable=lambda error: (
                isinstance(error, KubernetesApiError) and is_retryable(error)
            ),
            retry_for=self.settings.retry_for,
            sleep=self._sleep,
            first_delay=0.1,
            log=log,
        )

    async def instances(self) -> list[Instance]:
        return parse_pods(await self._send(list_request(self.settings)))

    async def _delete_ended(self, pod_list: Mapping[str, Any], keep: Collection[str]) -> None:
        """Delete the ended pods not in ``keep``: one attempt each, failures only logged.

        The action they come with matters more; the next action tries them again.
        """
        for pod in ended_pods(pod_list):
            name = pod["metadata"]["name"]
            if name in keep:
                continue
            try:
                await asyncio.to_thread(self._send_once, delete_request(self.settings, name))
            except KubernetesApiError as error:
                if error.status != 404:
                    log.warning("kubernetes: could not delete ended pod %s: %s", name, error)
                continue
            log.info("kubernetes: deleted ended pod %s (%s)", name, how_it_ended(pod))

    async def scale_up(self, n: int) -> None:
        pod_list = await self._send(list_request(self.settings))
        await self._delete_ended(pod_list, keep=())
        for _ in range(n - count_requested(parse_pods(pod_list))):
            name = worker_pod_name(self.settings.deployment)
            try:
                await self._send(create_request(self.settings, name))
            except KubernetesApiError as error:
                if error.reason != "AlreadyExists":  # a retried create that had gone through
                    raise
            log.info("kubernetes: created pod %s", name)

    async def scale_down(self, names: Collection[str]) -> None:
        pod_list = await self._send(list_request(self.settings))
        pods = pod_list.get("items") or []
        wanted = set(names)
        await self._delete_ended(pod_list, keep=wanted)
        doomed = {
            pod["metadata"]["name"]
            for pod in pods
            if pod["metadata"]["name"] in wanted and not pod["metadata"].get("deletionTimestamp")
        }
        for name in sorted(doomed):
            try:
                await self._send(delete_request(self.settings, name))
            except KubernetesApiError as error:
                if error.status != 404:  # already gone is what we wanted
                    raise
            log.info("kubernetes: deleted pod %s", name)

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)


def create(context: BackendContext) -> Backend:
    """Build the Kubernetes backend from the scaler configuration's ``backend.options``."""
    settings = load_settings(context)
    return KubernetesBackend(settings, api_client(settings))


__all__ = ["RBAC_RULES", "KubernetesBackend", "create"]
