"""Every built-in backend passes the conformance checks shipped in dask_deploy.testing.

A backend joins with one line in ``SUBJECTS``: a factory (an async context manager yielding a
:class:`~dask_deploy.testing.conformance.Subject`) and the marker of its tier.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import requests
import yaml

from dask_deploy.backends import BackendContext, load_backend_factory
from dask_deploy.testing.conformance import CHECKS, Subject
from dask_deploy.testing.kubernetes import KubernetesStandIn
from dask_deploy.testing.marathon import MarathonStandIn

SubjectFactory = Callable[[pytest.FixtureRequest], AbstractAsyncContextManager[Subject]]
#: No scheduler listens here: the workers a check starts never need to register.
NOWHERE = "tcp://127.0.0.1:1"


@contextlib.asynccontextmanager
async def subject_of(
    name: str, options: dict[str, object], **knobs: object
) -> AsyncIterator[Subject]:
    # A fresh name: SLURM lists the jobs of an earlier run (as ended) for MinJobAge.
    deployment = f"conformance-{uuid.uuid4().hex[:6]}"
    backend = load_backend_factory(name)(BackendContext(deployment, NOWHERE, options))
    try:
        yield Subject(backend, **knobs)  # type: ignore[arg-type]
    finally:
        with contextlib.suppress(Exception):
            await backend.scale_down([i.name for i in await backend.instances()])
        await backend.close()


@contextlib.asynccontextmanager
async def fake(_: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    async with subject_of("fake", {}, watch=0.2) as subject:
        yield subject


@contextlib.asynccontextmanager
async def local(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    options = {"state_dir": str(tmp_path / "local"), "death_timeout": 30}
    async with subject_of("local", options) as subject:
        yield subject


@contextlib.asynccontextmanager
async def marathon(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    with MarathonStandIn(workdir=tmp_path / "sandboxes", deployment_seconds=0.0) as standin:
        app = {"id": "/conformance/worker", "cmd": "sleep 60", "instances": 0}
        requests.post(f"{standin.url}/v2/apps", json=app, timeout=5).raise_for_status()
        options = {"url": standin.url, "app_id": "/conformance/worker"}
        async with subject_of("marathon", options) as subject:
            yield subject


SLEEPER_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"labels": {"app.kubernetes.io/name": "dask"}},
    "spec": {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 5,
        "containers": [
            {
                "name": "worker",
                "image": "dask",
                "command": [sys.executable, "-c", "import time; time.sleep(600)"],
            }
        ],
    },
}


@contextlib.asynccontextmanager
async def kubernetes(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    with KubernetesStandIn(tmp_path / "api") as api:
        template = tmp_path / "worker-pod.yaml"
        template.write_text(yaml.safe_dump(SLEEPER_POD))
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", namespace="default")

        @contextlib.asynccontextmanager
        async def no_free_node() -> AsyncIterator[None]:
            api.schedulable = False
            try:
                yield
            finally:
                api.schedulable = True

        options = {"worker_template": str(template), "kubeconfig": str(kubeconfig)}
        async with subject_of("kubernetes", options, hold_pending=no_free_node) as subject:
            yield subject


@contextlib.asynccontextmanager
async def slurm(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    request.getfixturevalue("slurm")  # the project's SLURM, started once per session
    tmp_path: Path = request.getfixturevalue("tmp_path")
    script = tmp_path / "worker-job.sh"
    script.write_text(
        f"#!/bin/bash\n#SBATCH --time=10\n#SBATCH --output={tmp_path}/%j.out\nexec sleep 300\n"
    )

    @contextlib.asynccontextmanager
    async def partition_down() -> AsyncIterator[None]:
        """Jobs stay PENDING (reason PartitionDown) while no node may take them."""
        subprocess.run(["scontrol", "update", "PartitionName=debug", "State=DOWN"], check=True)
        try:
            yield
        finally:
            subprocess.run(["scontrol", "update", "PartitionName=debug", "State=UP"], check=True)

    options = {"worker_script": str(script)}
    async with subject_of("slurm", options, hold_pending=partition_down) as subject:
        yield subject


#: Workers of the ssh and command subjects give up on the missing scheduler after this long.
WORKER_ARGS = ["--death-timeout", "30", "--nthreads", "1", "--no-dashboard"]


@contextlib.asynccontextmanager
async def ssh(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    servers = request.getfixturevalue("sshd")  # the project's sshd on 127.0.0.2-4
    tmp_path: Path = request.getfixturevalue("tmp_path")
    options = {
        **servers.options(),
        "hosts": [{"host": host, "max_workers": 2} for host in servers.hosts],
        "state_dir": str(tmp_path / "ssh-state"),
        "python": sys.executable,
        "worker_args": WORKER_ARGS,
    }
    async with subject_of("ssh", options) as subject:
        yield subject


@contextlib.asynccontextmanager
async def command(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    """The command backend running the rendered local example (local-workers.sh)."""
    from render_support import render_over_defaults

    tmp_path: Path = request.getfixturevalue("tmp_path")
    out = tmp_path / "rendered"
    values = {
        "python": {"executable": sys.executable},
        "local": {"state_dir": str(tmp_path / "workers")},
        "worker": {"threads": 1, "memory": "512MiB", "death_timeout": 30},
    }
    render_over_defaults("command", values, out)
    script = str(out / "local-workers.sh")
    options = {"start": [script, "start"], "stop": [script, "stop"], "list": [script, "list"]}
    async with subject_of("command", options) as subject:
        yield subject


@contextlib.asynccontextmanager
async def htcondor(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    pool = request.getfixturevalue("htcondor")  # the project's pool, shims on PATH
    folder = pool.share / f"conformance-{uuid.uuid4().hex[:6]}"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)  # the pool's submitting user writes the job logs here
    (folder / "sleeper.sh").write_text("#!/bin/sh\nexec sleep 300\n")
    (folder / "sleeper.sh").chmod(0o755)
    submit = folder / "worker.sub"
    submit.write_text(
        f"executable = {folder}/sleeper.sh\nrequest_cpus = 1\nrequest_memory = 64\n"
        f"request_disk = 1024\nlog = {folder}/events\nqueue 1\n"
    )
    options = {"worker_script": str(submit), "status_interval": 0.5}
    try:
        async with subject_of("htcondor", options) as subject:
            yield subject
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=False)


SUBJECTS = [
    pytest.param(fake, id="fake"),
    pytest.param(local, id="local", marks=pytest.mark.integration),
    pytest.param(marathon, id="marathon", marks=pytest.mark.marathon),
    pytest.param(kubernetes, id="kubernetes", marks=pytest.mark.kubernetes),
    pytest.param(slurm, id="slurm", marks=pytest.mark.slurm),
    pytest.param(ssh, id="ssh", marks=pytest.mark.ssh),
    pytest.param(command, id="command", marks=pytest.mark.command),
    pytest.param(htcondor, id="htcondor", marks=pytest.mark.htcondor),
]


@pytest.mark.parametrize("check", list(CHECKS.values()), ids=list(CHECKS))
@pytest.mark.parametrize("make_subject", SUBJECTS)
async def test_backend_conforms(
    make_subject: SubjectFactory,
    check: Callable[[Subject], Awaitable[None]],
    request: pytest.FixtureRequest,
) -> None:
    async with make_subject(request) as subject:
        await check(subject)
