"""The Kubernetes backend: pure request builders and parsers, and the runner via the stand-in."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from dask_deploy import SettingsError
from dask_deploy.backends import BackendContext, Instance, InstanceState
from dask_deploy.backends import kubernetes as k8s
from dask_deploy.testing.kubernetes import (
    TOKEN_PATH,
    KubernetesStandIn,
    expand,
    matches_selector,
)

pytestmark = pytest.mark.kubernetes

SLEEPER = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"labels": {"app.kubernetes.io/name": "dask"}},
    "spec": {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 5,
        "containers": [
            {
                "name": "worker",
                "image": "ghcr.io/dask-deploy/dask-deploy:0.1.0",
                "command": [
                    sys.executable,
                    "-c",
                    "import sys, time; open(sys.argv[1] + '.name', 'w').write(sys.argv[1]); "
                    "time.sleep(600)",
                ],
                "args": ["$(DASK_WORKER_NAME)"],
                "env": [
                    {
                        "name": "DASK_WORKER_NAME",
                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                    }
                ],
            }
        ],
    },
}


def settings(**changes: Any) -> k8s.KubernetesSettings:
    return k8s.KubernetesSettings(
        **{"deployment": "dask", "namespace": "ns1", "worker_template": SLEEPER, **changes}
    )


def test_worker_pod_gets_name_namespace_labels_and_owner() -> None:
    owner = {"api_version": "v1", "kind": "Pod", "name": "dask-scheduler-x", "uid": "u-1"}
    pod = k8s.worker_pod(settings(owner=owner), "dask-worker-abcde")
    assert pod["metadata"]["name"] == "dask-worker-abcde"
    assert pod["metadata"]["namespace"] == "ns1"
    assert pod["metadata"]["labels"] == {
        "app.kubernetes.io/name": "dask",
        "app.kubernetes.io/instance": "dask",
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/managed-by": "dask-deploy",
    }
    assert pod["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": "dask-scheduler-x",
            "uid": "u-1",
            "controller": True,
        }
    ]
    assert "ownerReferences" not in k8s.worker_pod(settings(), "x")["metadata"]
    assert SLEEPER["metadata"] == {"labels": {"app.kubernetes.io/name": "dask"}}  # not mutated


def test_worker_pod_names_are_distinct_and_short() -> None:
    names = {k8s.worker_pod_name("d" * 40) for _ in range(50)}
    assert len(names) == 50
    assert all(len(name) <= 63 and name.startswith("d" * 40 + "-worker-") for name in names)


def test_requests_paths_and_verbs() -> None:
    create = k8s.create_request(settings(), "dask-worker-abcde")
    assert (create.method, create.path) == ("POST", "/api/v1/namespaces/ns1/pods")
    listing = k8s.list_request(settings())
    assert (listing.method, listing.path) == ("GET", "/api/v1/namespaces/ns1/pods")
    selector = dict(listing.query)["labelSelector"]
    assert matches_selector(create.body["metadata"]["labels"], selector)  # type: ignore[index]
    assert not matches_selector(
        {**create.body["metadata"]["labels"], "app.kubernetes.io/instance": "other"}, selector
    )  # type: ignore[index]
    delete = k8s.delete_request(settings(), "dask-worker-abcde")
    assert (delete.method, delete.path) == (
        "DELETE",
        "/api/v1/namespaces/ns1/pods/dask-worker-abcde",
    )
    assert {(r.verb, r.resource) for r in (create, listing, delete)} == set(k8s.RBAC_RULES)


def pod(name: str, phase: str, deleting: bool = False) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "creationTimestamp": "2026-01-02T03:04:05Z"}
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-02T03:05:00Z"
    return {"metadata": metadata, "status": {"phase": phase}}


def test_parse_pods_maps_phases() -> None:
    pods = {
        "items": [
            pod("e", "Running", deleting=True),
            pod("a", "Pending"),
            pod("b", "Running"),
            pod("c", "Succeeded"),
            pod("d", "Failed"),
        ]
    }
    assert [(i.name, i.state) for i in k8s.parse_pods(pods)] == [
        ("a", InstanceState.PENDING),
        ("b", InstanceState.RUNNING),
        ("c", InstanceState.EXITED),
        ("d", InstanceState.EXITED),
        ("e", InstanceState.EXITED),
    ]
    assert k8s.parse_pods(pods)[0].requested_at == 1767323045.0
    assert k8s.parse_pods({"items": None}) == []


def test_ended_pods_are_the_finished_ones_not_yet_deleted_and_say_how() -> None:
    pods = {
        "items": [
            pod("a", "Running"),
            pod("b", "Succeeded"),
            pod("c", "Failed", deleting=True),
            pod("d", "Failed"),
            pod("e", "Pending"),
        ]
    }
    assert [p["metadata"]["name"] for p in k8s.ended_pods(pods)] == ["b", "d"]
    killed = pod("f", "Failed")
    killed["status"]["containerStatuses"] = [
        {"name": "worker", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}
    ]
    assert k8s.how_it_ended(killed) == "Failed: worker exit code 137 (OOMKilled)"
    assert k8s.how_it_ended(pod("g", "Succeeded")) == "Succeeded"


def forbidden(message: str) -> bytes:
    return json.dumps(
        {
            "kind": "Status",
            "status": "Failure",
            "reason": "Forbidden",
            "code": 403,
            "message": message,
        }
    ).encode()


def test_forbidden_by_rbac_names_verb_and_resource() -> None:
    message = (
        'pods "p" is forbidden: User "system:serviceaccount:default:dask-scaler" cannot delete '
        'resource "pods" in API group "" in the namespace "default"'
    )
    error = k8s.api_error(k8s.delete_request(settings(), "p"), 403, forbidden(message))
    assert isinstance(error, k8s.KubernetesPermissionError)
    assert message in str(error)
    assert 'grant verb "delete" on resource "pods"' in str(error)


@pytest.mark.parametrize(
    "message",
    [
        'pods "dask-worker-x7k2q" is forbidden: exceeded quota: compute, requested: '
        "limits.cpu=2, used: limits.cpu=8, limited: limits.cpu=8",
        'pods "dask-worker-x7k2q" is forbidden: violates PodSecurity "restricted:latest": '
        'allowPrivilegeEscalation != false (container "worker" must set '
        "securityContext.allowPrivilegeEscalation=false)",
    ],
    ids=["quota", "admission"],
)
def test_forbidden_by_quota_or_admission_reports_the_apis_message(message: str) -> None:
    error = k8s.api_error(k8s.create_request(settings(), "p"), 403, forbidden(message))
    assert not isinstance(error, k8s.KubernetesPermissionError)
    assert (error.status, error.reason) == (403, "Forbidden")
    assert str(error).endswith(f"403 Forbidden: {message}")
    assert "grant" not in str(error) and "Role" not in str(error)


def test_api_errors_other_than_forbidden() -> None:
    conflict = k8s.api_error(k8s.list_request(settings()), 409, b'{"reason":"Conflict"}')
    assert k8s.is_retryable(conflict)
    exists = k8s.api_error(k8s.list_request(settings()), 409, b'{"reason":"AlreadyExists"}')
    assert not k8s.is_retryable(exists)
    assert k8s.is_retryable(k8s.api_error(k8s.list_request(settings()), 503, b"<html>"))


def test_settings_name_the_bad_key(tmp_path: Path) -> None:
    template = tmp_path / "worker-pod.yaml"
    template.write_text(yaml.safe_dump(SLEEPER))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [
                    {"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "team"}}
                ],
                "current-context": "x",
            }
        )
    )
    good = {"worker_template": str(template), "kubeconfig": str(kubeconfig)}
    loaded = k8s.load_settings(BackendContext("dask", "tcp://x:1", good))
    assert loaded.namespace == "team"
    # A call retries for about one scaler interval; the loop retries after that.
    assert (loaded.request_timeout, loaded.retry_for) == (10.0, 1.0)
    cases = [
        ({**good, "bogus": 1}, "backend.options.bogus"),
        (
            {**good, "worker_template": str(tmp_path / "missing.yaml")},
            "backend.options.worker_template",
        ),
        ({**good, "retry_for": 0}, "backend.options.retry_for"),
        ({**good, "owner": {"kind": "Pod"}}, "backend.options.owner"),
        (
            {
                **good,
                "owner": {
                    "api_version": "v1",
                    "kind": "Pod",
                    "name": "${NO_SUCH_VAR_X}",
                    "uid": "u",
                },
            },
            "backend.options.owner.name",
        ),
    ]
    for options, key in cases:
        with pytest.raises(SettingsError, match=key.replace(".", r"\.")):
            k8s.load_settings(BackendContext("dask", "tcp://x:1", options))


@pytest.fixture
def stand_in(tmp_path: Path) -> Any:
    with KubernetesStandIn(tmp_path / "api", allowed=set(k8s.RBAC_RULES)) as api:
        yield api


def backend_for(stand_in: KubernetesStandIn, tmp_path: Path, **options: Any) -> Any:
    template = tmp_path / "worker-pod.yaml"
    template.write_text(yaml.safe_dump(SLEEPER))
    kubeconfig = stand_in.write_kubeconfig(tmp_path / "kubeconfig", namespace="default")
    context = BackendContext(
        "dask",
        "tcp://127.0.0.1:1",
        {"worker_template": str(template), "kubeconfig": str(kubeconfig), **options},
    )
    return k8s.create(context)


async def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_scale_up_down_through_the_stand_in(
    stand_in: KubernetesStandIn, tmp_path: Path
) -> None:
    backend = backend_for(stand_in, tmp_path)
    try:
        await backend.scale_up(3)
        await backend.scale_up(2)  # never lowers
        instances = await backend.instances()
        assert len(instances) == 3
        assert all(isinstance(i, Instance) and i.name.startswith("dask-worker-") for i in instances)
        await wait_for(
            lambda: all(p["status"]["phase"] == "Running" for p in stand_in.pods().values())
        )
        # the container got its own pod name through the downward API
        name_file = stand_in.workdir / f"{instances[0].name}.name"
        await wait_for(name_file.exists)
        await wait_for(lambda: name_file.read_text() == instances[0].name)
        victim, *kept = sorted(i.name for i in instances)
        await backend.scale_down([victim, "not-a-pod"])
        states = {i.name: i.state for i in await backend.instances()}
        assert states.get(victim, InstanceState.EXITED) is InstanceState.EXITED
        assert [states[k] for k in kept] == [InstanceState.RUNNING] * 2
        await wait_for(lambda: victim not in stand_in.pods())  # SIGTERM ended it
        assert set(stand_in.pods()) == set(kept)
        assert set(stand_in.calls) == set(k8s.RBAC_RULES)
    finally:
        await backend.close()


async def test_conflict_and_server_errors_are_retried(
    stand_in: KubernetesStandIn, tmp_path: Path
) -> None:
    # Two failures per call within a retry budget of real time: 30 s, not the default 1 s a
    # loaded machine's round trips can use up.
    backend = backend_for(stand_in, tmp_path, retry_for=30)
    try:
        stand_in.inject("create", 409, times=2)
        stand_in.inject("list", 503, times=2)
        await backend.scale_up(1)
        assert len(await backend.instances()) == 1
        stand_in.inject("delete", 500)
        await backend.scale_down([i.name for i in await backend.instances()])
        assert all(i.state is InstanceState.EXITED for i in await backend.instances())
    finally:
        await backend.close()


async def test_forbidden_reports_verb_and_resource(tmp_path: Path) -> None:
    with KubernetesStandIn(tmp_path / "api", allowed={("list", "pods")}) as api:
        backend = backend_for(api, tmp_path)
        try:
            with pytest.raises(
                k8s.KubernetesPermissionError, match='grant verb "create" on resource "pods"'
            ):
                await backend.scale_up(1)
        finally:
            await backend.close()


async def test_quota_rejection_reports_the_quota_not_rbac(tmp_path: Path) -> None:
    quota = (
        'pods "dask-worker-x7k2q" is forbidden: exceeded quota: compute, requested: '
        "requests.cpu=1, used: requests.cpu=4, limited: requests.cpu=4"
    )
    with KubernetesStandIn(tmp_path / "api", allowed=set(k8s.RBAC_RULES)) as api:
        api.inject("create", 403, message=quota)
        backend = backend_for(api, tmp_path)
        try:
            with pytest.raises(k8s.KubernetesApiError) as caught:
                await backend.scale_up(1)
        finally:
            await backend.close()
    assert "exceeded quota: compute" in str(caught.value)
    assert not isinstance(caught.value, k8s.KubernetesPermissionError)
    assert "Role" not in str(caught.value)


async def test_stand_in_rejects_invalid_pods_and_collects_orphans(
    stand_in: KubernetesStandIn, tmp_path: Path
) -> None:
    owner_uid = stand_in.add_owner()
    owner = {
        "api_version": "apps/v1",
        "kind": "ReplicaSet",
        "name": "dask-scheduler-1",
        "uid": owner_uid,
    }
    backend = backend_for(stand_in, tmp_path, owner=owner)
    try:
        await backend.scale_up(2)
        bad = k8s.worker_pod(backend.settings, "dask-worker-bad00")
        bad["spec"]["containers"][0]["resources"] = {"limits": {"cpu": ["not", "a", "quantity"]}}
        status, answer = stand_in.handle("POST", "/api/v1/namespaces/default/pods", bad)
        assert (status, answer["reason"]) == (422, "Invalid")
        status, answer = stand_in.handle(
            "DELETE",
            "/api/v1/namespaces/default/pods/" + next(iter(stand_in.pods())),
            {
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "preconditions": {"resourceVersion": "1"},
            },
        )
        assert (status, answer["reason"]) == (409, "Conflict")
        stand_in.remove_owner(owner_uid)
        await wait_for(lambda: not stand_in.pods())
    finally:
        await backend.close()


async def test_a_retried_create_that_went_through_is_not_an_error(
    stand_in: KubernetesStandIn, tmp_path: Path
) -> None:
    backend = backend_for(stand_in, tmp_path)
    try:
        stand_in.inject("create", 409, reason="AlreadyExists")
        await backend.scale_up(1)  # the answer to a create the server had already done
    finally:
        await backend.close()


async def test_no_answer_is_retried_then_reported(tmp_path: Path) -> None:
    with KubernetesStandIn(tmp_path / "api") as api:
        backend = backend_for(api, tmp_path, retry_for=0.5, request_timeout=1)
    try:  # the server is gone now
        with pytest.raises(k8s.KubernetesApiError, match="GET /api/v1/namespaces/default/pods: 0"):
            await backend.instances()
    finally:
        await backend.close()


def test_stand_in_selectors_and_variable_expansion_follow_kubernetes() -> None:
    labels = {"app": "dask", "tier": "worker"}
    assert matches_selector(labels, "app=dask,tier==worker")
    assert matches_selector(labels, "app in (dask, other),tier notin (scheduler),!gpu,app")
    assert not matches_selector(labels, "app!=dask")
    assert not matches_selector(labels, "gpu")
    assert expand("$(A)-$(B)-$$(A)", {"A": "x"}) == "x-$(B)-$(A)"


async def test_a_hung_call_is_one_request_bounded_by_request_timeout(
    stand_in: KubernetesStandIn, tmp_path: Path
) -> None:
    backend = backend_for(stand_in, tmp_path, request_timeout=0.3, retry_for=0.01)
    try:
        for held, drop in enumerate((False, True), start=1):
            stand_in.calls.clear()
            stand_in.inject("list", delay=30, drop=drop)
            with pytest.raises(k8s.KubernetesApiError, match=r"pods: 0 ReadTimeoutError"):
                await backend.instances()
            # The stand-in's handler thread records the call; on a loaded machine that can come
            # after the client's 0.3 s, so wait for it before counting (and before the next clear).
            await wait_for(lambda: stand_in.calls)
            # urllib3 retries nothing behind our back: the one attempt was the one request
            assert stand_in.calls == [("list", "pods")]
            assert stand_in.pending_faults() == held  # still held: the client gave up first
    finally:
        await backend.close()


async def test_a_create_answered_too_late_or_dropped_makes_one_pod(
    stand_in: KubernetesStandIn, tmp_path: Path
) -> None:
    backend = backend_for(stand_in, tmp_path, request_timeout=0.3, retry_for=10)
    try:
        # Held past the client's timeout, then done: the retry meets AlreadyExists or
        # creates it first, and the held one then does.
        stand_in.inject("create", delay=0.6)
        await backend.scale_up(1)
        await wait_for(lambda: stand_in.pending_faults() == 0)
        assert len(stand_in.pods()) == 1
        # Dropped unanswered: not done, so the retry creates it.
        stand_in.inject("create", delay=0.1, drop=True)
        await backend.scale_up(2)
        # Served by the stand-in's thread, which a loaded machine may run after the client's
        # timeout and retry: wait for it, as above.
        await wait_for(lambda: stand_in.pending_faults() == 0)
        assert len(stand_in.pods()) == len(stand_in.created) == 2
    finally:
        await backend.close()


def test_stand_in_faults_are_pending_until_served_and_need_an_effect(
    stand_in: KubernetesStandIn,
) -> None:
    import threading

    path = "/api/v1/namespaces/default/pods"
    stand_in.inject("list", 503, times=2)
    assert stand_in.pending_faults() == 2
    assert stand_in.handle("GET", path, None)[0] == 503
    assert stand_in.handle("GET", path, None)[1]["reason"] == "ServiceUnavailable"
    assert stand_in.handle("GET", path, None)[0] == 200
    # Held long enough that a loaded machine's pause between the poll and the check below
    # still finds it held.
    stand_in.inject("list", delay=3.0)
    answers: list[int] = []
    held = threading.Thread(target=lambda: answers.append(stand_in.handle("GET", path, None)[0]))
    held.start()
    deadline = time.monotonic() + 5
    while stand_in.calls.count(("list", "pods")) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert stand_in.pending_faults() == 1  # being held
    held.join()
    assert (answers, stand_in.pending_faults()) == ([200], 0)  # then served normally
    with pytest.raises(ValueError, match="a status, a delay or drop"):
        stand_in.inject("list")


async def test_scaling_deletes_ended_pods_and_listing_changes_nothing(
    stand_in: KubernetesStandIn, tmp_path: Path
) -> None:
    backend = backend_for(stand_in, tmp_path)
    try:
        await backend.scale_up(2)
        await wait_for(
            lambda: all(p["status"]["phase"] == "Running" for p in stand_in.pods().values())
        )
        victim, survivor = sorted(stand_in.pods())
        stand_in.kill_containers(victim)
        await wait_for(lambda: stand_in.pods()[victim]["status"]["phase"] == "Failed")
        states = {i.name: i.state for i in await backend.instances()}
        assert states == {victim: InstanceState.EXITED, survivor: InstanceState.RUNNING}
        stand_in.inject("delete", 500)  # one attempt per action, and the action goes on
        await backend.scale_up(2)
        assert (stand_in.deleted, len(stand_in.pods())) == ([], 3)
        await backend.scale_down([survivor])
        assert stand_in.deleted == [victim, survivor]
        await wait_for(lambda: len(stand_in.pods()) == 1)
    finally:
        await backend.close()


def test_pending_reason_from_the_schedulers_condition_or_a_stuck_container() -> None:
    unschedulable = pod("a", "Pending")
    message = "0/3 nodes are available: 1 Insufficient memory, 2 Insufficient cpu."
    unschedulable["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
    ]
    bad_image = pod("b", "Pending")
    bad_image["status"]["containerStatuses"] = [
        {"name": "worker", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "x"}}}
    ]
    starting = pod("c", "Pending")
    starting["status"]["containerStatuses"] = [
        {"name": "worker", "state": {"waiting": {"reason": "ContainerCreating"}}}
    ]
    reasons = {
        i.name: i.reason for i in k8s.parse_pods({"items": [unschedulable, bad_image, starting]})
    }
    assert reasons == {"a": f"Unschedulable: {message}", "b": "ImagePullBackOff: x", "c": None}


def hungry(name: str, cpu: str, **spec: Any) -> dict[str, Any]:
    manifest = json.loads(json.dumps(SLEEPER))
    manifest["metadata"]["name"] = name
    manifest["spec"] |= {"automountServiceAccountToken": False, **spec}
    manifest["spec"]["containers"][0]["resources"] = {"requests": {"cpu": cpu, "memory": "1Gi"}}
    return manifest


def test_stand_in_schedules_like_kube_scheduler(tmp_path: Path) -> None:
    allocatable = {"cpu": "2", "memory": "4Gi", "pods": "110"}
    with KubernetesStandIn(tmp_path / "api", allocatable=allocatable) as api:
        post = "/api/v1/namespaces/default/pods"
        assert api.handle("POST", post, hungry("fits", "1500m"))[0] == 201
        assert api.handle("POST", post, hungry("waits", "1"))[0] == 201
        gpu = hungry("gpu", "100m")
        gpu["spec"]["containers"][0]["resources"]["limits"] = {"nvidia.com/gpu": "1"}
        assert api.handle("POST", post, gpu)[0] == 201
        away = hungry("away", "100m", nodeSelector={"pool": "gpu"})
        assert api.handle("POST", post, away)[0] == 201
        pods = api.pods()
        assert pods["fits"]["status"]["phase"] == "Running"
        assert pods["fits"]["spec"]["nodeName"] == "stand-in"

        def condition(name: str) -> dict[str, Any]:
            (scheduled,) = api.pods()[name]["status"]["conditions"]
            return dict(scheduled)

        assert condition("waits") | {"lastTransitionTime": None} == {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient cpu.",
            "lastProbeTime": None,
            "lastTransitionTime": None,
        }
        assert condition("gpu")["message"] == (
            "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
        )
        assert condition("away")["message"] == (
            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
        )
        assert "nodeName" not in pods["waits"]["spec"] and not api.log_path("waits").exists()
        # Capacity freed: the waiting pod is scheduled and started.
        api.kill_containers("fits")
        deadline = time.monotonic() + 20
        while api.pods()["waits"]["status"]["phase"] != "Running":
            assert time.monotonic() < deadline, api.pods()["waits"]["status"]
            time.sleep(0.05)
        assert condition("waits")["status"] == "True"


def test_stand_in_mounts_a_token_unless_the_pod_opts_out(tmp_path: Path) -> None:
    with KubernetesStandIn(tmp_path / "api") as api:
        post = "/api/v1/namespaces/default/pods"
        default = hungry("default", "100m")
        del default["spec"]["automountServiceAccountToken"]
        assert api.handle("POST", post, default)[0] == 201
        assert api.handle("POST", post, hungry("opted-out", "100m"))[0] == 201
        token = api.mounts("default", "worker")[TOKEN_PATH]
        assert (token / "token").read_text() == "stand-in-token-for-default"
        assert TOKEN_PATH not in api.mounts("opted-out", "worker")


#: A container that records each SIGTERM it gets, in its first process and in a child of that
#: process (same process group), and goes on running.
TERM_RECORDER = """
import signal, subprocess, sys, time
record, who = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "first"
def on_term(signum, frame):
    with open(record, "a") as out:
        out.write(who + "\\n")
signal.signal(signal.SIGTERM, on_term)
if who == "first":
    subprocess.Popen([sys.executable, __file__, record, "child"])
with open(record, "a") as out:
    out.write("started\\n")
while True:
    time.sleep(0.05)
"""


def term_recording_pod(name: str, tmp_path: Path, grace: int) -> dict[str, Any]:
    script = tmp_path / "term_recorder.py"
    script.write_text(TERM_RECORDER)
    manifest = hungry(name, "100m", terminationGracePeriodSeconds=grace)
    container = manifest["spec"]["containers"][0]
    container["command"] = [sys.executable, str(script), str(tmp_path / "record")]
    container.pop("args", None)
    return manifest


def test_stand_in_deletes_a_pod_as_the_kubelet_does(tmp_path: Path) -> None:
    """SIGTERM to the container's first process only (a runtime signals PID 1), the pod listed
    with its deletionTimestamp meanwhile, SIGKILL to everything left once the grace period is
    over (tests/integration/kubernetes/test_kubernetes_handover.py: a worker that exits within
    it is gone then)."""
    grace = 5  # long enough for a loaded machine to run the SIGTERM handler before the SIGKILL
    with KubernetesStandIn(tmp_path / "api") as api:
        record = tmp_path / "record"
        post = "/api/v1/namespaces/default/pods"
        assert api.handle("POST", post, term_recording_pod("stubborn", tmp_path, grace))[0] == 201
        deadline = time.monotonic() + 30
        while (record.read_text() if record.exists() else "").count("started") < 2:
            assert time.monotonic() < deadline, "the container did not start"
            time.sleep(0.05)
        status, pod = api.handle("DELETE", f"{post}/stubborn", None)
        deleted = time.monotonic()
        assert status == 200 and pod["metadata"]["deletionGracePeriodSeconds"] == grace
        # Still listed, terminating. Checked at once: a loaded machine may take seconds to run
        # the handler that records the SIGTERM.
        assert "deletionTimestamp" in api.pods()["stubborn"]["metadata"]
        while "first" not in record.read_text():
            assert time.monotonic() < deleted + 10, record.read_text()
            time.sleep(0.05)
        while "stubborn" in api.pods():
            assert time.monotonic() < deleted + 30, "not SIGKILLed after the grace period"
            time.sleep(0.05)
        assert time.monotonic() - deleted >= grace
        assert record.read_text().split().count("first") == 1
        assert "child" not in record.read_text()  # only the first process got SIGTERM
