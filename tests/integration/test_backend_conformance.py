"""Every built-in backend passes the conformance checks shipped in dask_deploy.testing.

A backend joins with one line in ``SUBJECTS``: a factory (an async context manager yielding a
:class:`~dask_deploy.testing.conformance.Subject`) and the marker of its tier.
"""

from __future__ import annotations

import contextlib
import os
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
from dask_deploy.testing import lsf as lsf_standin
from dask_deploy.testing.conformance import CHECKS, Subject
from dask_deploy.testing.kubernetes import KubernetesStandIn
from marathon_support import marathon_standin

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
    with marathon_standin(workdir=tmp_path / "sandboxes", deployment_seconds=0.0) as standin:
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


@contextlib.asynccontextmanager
async def sge(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    request.getfixturevalue("sge")  # the project's Grid Engine, started once per session
    tmp_path: Path = request.getfixturevalue("tmp_path")
    script = tmp_path / "worker-job.sh"
    script.write_text(f"#!/bin/bash\n#$ -S /bin/bash\n#$ -j y\n#$ -o {tmp_path}\nexec sleep 300\n")

    @contextlib.asynccontextmanager
    async def queue_disabled() -> AsyncIterator[None]:
        """Jobs stay queued (qw) while no queue instance may take them."""
        subprocess.run(["qmod", "-d", "all.q"], check=True, capture_output=True)
        try:
            yield
        finally:
            subprocess.run(["qmod", "-e", "all.q"], check=True, capture_output=True)

    # Grid Engine forgets an ended job: a removal shows at the next listing, so list often.
    options = {"worker_script": str(script), "status_interval": 0.5}
    async with subject_of("sge", options, hold_pending=queue_disabled) as subject:
        yield subject


@contextlib.asynccontextmanager
async def pbs(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    """SLURM's Torque-compatible qsub/qstat/qdel: the real PBS command line, on SLURM."""
    request.getfixturevalue("slurm")
    commands: Path = request.getfixturevalue("torque_commands")
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setenv("PATH", f"{commands}{os.pathsep}{os.environ['PATH']}")
    tmp_path: Path = request.getfixturevalue("tmp_path")
    script = tmp_path / "worker-job.sh"
    script.write_text("#!/bin/bash\n#PBS -l walltime=00:10:00\n#PBS -j oe\nexec sleep 300\n")

    @contextlib.asynccontextmanager
    async def partition_down() -> AsyncIterator[None]:
        subprocess.run(["scontrol", "update", "PartitionName=debug", "State=DOWN"], check=True)
        try:
            yield
        finally:
            subprocess.run(["scontrol", "update", "PartitionName=debug", "State=UP"], check=True)

    # qsub's output files: SLURM's qsub writes <name>.o<id> and, despite -j oe, <name>.e<id>
    # where the test runs (the repository) unless -o and -e say otherwise.
    output = ["-o", f"{tmp_path}/%j.out", "-e", f"{tmp_path}/%j.err"]
    options = {"worker_script": str(script), "submit_args": output}
    async with subject_of("pbs", options, hold_pending=partition_down) as subject:
        yield subject


@contextlib.asynccontextmanager
async def lsf(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    """The LSF stand-in (dask_deploy.testing.lsf), its commands first on PATH."""
    tmp_path: Path = request.getfixturevalue("tmp_path")
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    state = tmp_path / "lsf-state"
    folder = lsf_standin.install(tmp_path / "lsf-bin", state, slots=4, terminate_interval=2.0)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(lsf_standin.STATE_ENV, str(state))
    script = tmp_path / "worker-job.sh"
    script.write_text(f"#!/bin/bash\n#BSUB -W 10\n#BSUB -o {tmp_path}/%J.out\nexec sleep 300\n")

    @contextlib.asynccontextmanager
    async def every_slot_taken() -> AsyncIterator[None]:
        """A job of another name holds all four slots: new jobs wait (PEND)."""
        blocker = (
            subprocess.run(
                ["bsub", "-J", "blocker", "-n", "4", "-o", "/dev/null", "sleep", "600"],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.split("<", 1)[1]
            .split(">", 1)[0]
        )
        try:
            yield
        finally:
            subprocess.run(["bkill", blocker], capture_output=True, check=False)

    options = {"worker_script": str(script), "status_interval": 0.5}
    async with subject_of("lsf", options, hold_pending=every_slot_taken) as subject:
        yield subject


@contextlib.asynccontextmanager
async def docker(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    images: dict[str, str] = request.getfixturevalue("docker_images")
    options = {"image": images["worker"], "worker_args": ["--death-timeout", "60"]}
    async with subject_of("docker", options, settle=60.0) as subject:
        yield subject


SUBJECTS = [
    pytest.param(fake, id="fake"),
    pytest.param(local, id="local", marks=pytest.mark.integration),
    pytest.param(marathon, id="marathon", marks=pytest.mark.marathon),
    pytest.param(kubernetes, id="kubernetes", marks=pytest.mark.kubernetes),
    pytest.param(slurm, id="slurm", marks=pytest.mark.slurm),
    pytest.param(ssh, id="ssh", marks=pytest.mark.ssh),
    pytest.param(command, id="command", marks=pytest.mark.command),
    pytest.param(htcondor, id="htcondor", marks=pytest.mark.htcondor),
    pytest.param(docker, id="docker", marks=pytest.mark.docker),
    pytest.param(sge, id="sge", marks=pytest.mark.sge),
    pytest.param(pbs, id="pbs", marks=pytest.mark.pbs),
    pytest.param(lsf, id="lsf", marks=pytest.mark.lsf),
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
