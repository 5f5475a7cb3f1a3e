"""End to end on a real HTCondor personal pool: render, run scheduler.sh, burst, go idle.

scheduler.sh runs the scheduler and the scaler on the submit host (here: this machine, with the
condor_* shims on PATH); the scaler submits worker.sub, whose Dask workers run in the pool's
execute slot (inside the pool container, from the distributed installed in its image) and are
named by their job ids $(ClusterId).$(ProcId). Timings are short through the values.

scheduler.sh runs as root here and the jobs as the pool's submitting user, so the log folder is
made writable by everyone first; TLS is off but in the TLS test, whose certificates are put where
scheduler.sh would generate them, owned by that user (as yours would be: see the README).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from distributed import Client

from htcondor_support import POOL_PYTHON_BIN, SUBMITTER_UID, WORKER_SITE, HTCondor
from process_support import wait_for
from tls_support import (
    Certificates,
    assert_only_certified_clients_get_in,
    client_security,
    make_certificates,
)

pytestmark = pytest.mark.htcondor
VENV = Path(sys.executable).parent.parent


def condor(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


@dataclass
class Deployment:
    name: str
    folder: Path
    scheduler: subprocess.Popen[bytes]
    certificates: Certificates | None = None

    @property
    def log_folder(self) -> Path:
        return self.folder.parent / f"{self.name}-logs"  # htcondor.log_directory's default

    @property
    def scheduler_log(self) -> Path:
        return self.log_folder / f"{self.name}-scheduler.log"

    @property
    def scope(self) -> str:
        return f'DaskDeployment == "dask-deploy/{self.name}"'

    def live_jobs(self) -> dict[str, str]:
        """Job id -> JobStatus of this deployment's jobs in the queue (held ones included)."""
        out = condor(
            "condor_q", "-constraint", self.scope, "-af:t", "ClusterId", "ProcId", "JobStatus"
        )
        rows = [line.split("\t") for line in out.splitlines() if line.strip()]
        return {f"{c}.{p}": s for c, p, s in rows if s not in ("3", "4")}

    def ended_jobs(self) -> dict[str, str]:
        """Job id -> JobStatus of this deployment's jobs that left the queue (3 removed, 4 done)."""
        out = condor(
            "condor_history", "-constraint", self.scope, "-af:t", "ClusterId", "ProcId", "JobStatus"
        )
        rows = [line.split("\t") for line in out.splitlines() if line.strip()]
        return {f"{c}.{p}": s for c, p, s in rows}

    def logs(self) -> str:
        return "\n".join(
            f"----- {log.name}\n{log.read_text(errors='replace')[-4000:]}"
            for log in sorted([*self.folder.glob("*.log"), *self.log_folder.glob("*.log")])
        )


def worker_names(client: Client) -> set[str]:
    return {str(w["name"]) for w in client.scheduler_info()["workers"].values()}


def values(name: str, scaler: dict[str, Any], tls: bool) -> dict[str, Any]:
    """A deployment on 127.0.0.1: scheduler and scaler from this venv, workers from the pool's;
    TLS as by default (``tls``) or off."""
    return {
        "deployment": name,
        "python": {"executable": "python3"},
        "scheduler": {"host": "127.0.0.1", "dashboard_port": None},
        "worker": {
            "host": "127.0.0.1",
            "threads": 1,
            "memory_mib": 512,
            "disk_mib": 64,
            "death_timeout": 20,
            "env": {"PATH": f"{POOL_PYTHON_BIN}:/usr/bin:/bin", "PYTHONPATH": str(WORKER_SITE)},
        },
        "scaler": {
            "interval": 0.5,
            "status_interval": 1,
            "metrics_port": None,
            "cleanup_on_exit": True,
            **scaler,
        },
        **({} if tls else {"tls": {"enabled": False}}),
    }


@pytest.fixture
def deployment(htcondor: HTCondor, request: pytest.FixtureRequest) -> Iterator[Deployment]:
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    folder = htcondor.share / name
    values_file = htcondor.share / f"{name}-values.yaml"
    scaler = {"minimum": 1, "maximum": 3, "scale_down_window": 4, "startup_timeout": 120}
    asked = dict(getattr(request, "param", {}))
    tls = bool(asked.pop("tls", False))
    values_file.write_text(yaml.safe_dump(values(name, scaler | asked, tls)))
    log_folder = htcondor.share / f"{name}-logs"
    log_folder.mkdir()
    log_folder.chmod(0o777)  # the jobs write their output here (mkdir -p leaves it so)
    certificates = None
    if tls:  # where scheduler.sh generates them, which it then keeps: readable by the jobs' user
        tls_folder = htcondor.share / f"{name}-tls"
        certificates = make_certificates(tls_folder, ca="ca.pem", cert="tls.crt", key="tls.key")
        for path in (tls_folder, *tls_folder.iterdir()):
            os.chown(path, SUBMITTER_UID, -1)
    rendered = subprocess.run(
        [
            *(str(VENV / "bin" / "dask-deploy"), "render", "--backend", "htcondor"),
            *("--values", str(values_file), "--out", str(folder)),
        ],
        capture_output=True,
        text=True,
    )
    assert rendered.returncode == 0, rendered.stderr
    folder.chmod(0o777)  # the pool's submitting user writes the worker logs here
    env = {**os.environ, "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    with open(folder / "scheduler.log", "wb") as log:
        scheduler = subprocess.Popen(
            ["./scheduler.sh"],
            cwd=folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deployed = Deployment(name, folder, scheduler, certificates)
    try:
        yield deployed
    finally:
        if scheduler.poll() is None:
            os.killpg(scheduler.pid, signal.SIGTERM)
            try:
                scheduler.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(scheduler.pid, signal.SIGKILL)
        subprocess.run(["condor_rm", "-constraint", deployed.scope], capture_output=True)
        print(deployed.logs())
        print(htcondor.log_tails())
        for leftover in ("", "-logs", "-tls"):
            shutil.rmtree(htcondor.share / f"{name}{leftover}", ignore_errors=True)
        shutil.rmtree(htcondor.share / f".{name}-tls-ca", ignore_errors=True)
        values_file.unlink(missing_ok=True)


def connect(deployment: Deployment) -> Client:
    scheduler_file = deployment.folder / f"{deployment.name}-scheduler.json"
    wait_for(f"scheduler.sh writes {scheduler_file}", scheduler_file.exists, 60, deployment.logs)
    security = client_security(deployment.certificates) if deployment.certificates else None
    return Client(scheduler_file=str(scheduler_file), security=security, timeout="30s")


def burst(client: Client, seconds: int) -> tuple[list[Any], list[Any]]:
    sleeps = client.map(time.sleep, [1.0] * seconds, pure=False)
    squares = client.map(pow, range(seconds), [2] * seconds)
    return sleeps, squares


def test_burst_scales_up_by_job_id_and_idle_removes_exactly_the_retired_jobs(
    deployment: Deployment,
) -> None:
    with connect(deployment) as client:
        wait_for(
            "the minimum of one worker registers",
            lambda: len(worker_names(client)) == 1,
            120,
            deployment.logs,
        )
        sleeps, squares = burst(client, 40)
        wait_for(
            "the burst brings more workers",
            lambda: len(worker_names(client)) >= 2,
            120,
            deployment.logs,
        )
        names, live = worker_names(client), deployment.live_jobs()
        assert names <= set(live), f"workers {names} are not jobs {live}"
        assert len(live) <= 3
        client.gather(sleeps)
        assert client.gather(squares) == [x * x for x in range(40)]

        def every_live_job_is_a_worker() -> set[str]:
            live, names = set(deployment.live_jobs()), worker_names(client)
            return names if live == names else set()

        busy = wait_for(
            "every live job registered", every_live_job_is_a_worker, 120, deployment.logs
        )
        wait_for(
            "the workers go down to the minimum",
            lambda: len(worker_names(client)) == 1,
            120,
            deployment.logs,
        )
        remaining = worker_names(client)
        wait_for(
            "only the remaining worker's job is live",
            lambda: set(deployment.live_jobs()) == remaining,
            60,
            deployment.logs,
        )
        retired = busy - remaining

        def retired_jobs_ended() -> dict[str, str]:
            history = deployment.ended_jobs()
            return history if retired <= set(history) else {}

        ended = wait_for("the retired jobs are in the history", retired_jobs_ended, 60)
        assert {job: ended[job] for job in retired} == {
            job: ended[job] for job in retired if ended[job] in ("3", "4")
        }
        assert client.gather(squares) == [x * x for x in range(40)]


def test_a_job_removed_from_outside_is_replaced(deployment: Deployment) -> None:
    with connect(deployment) as client:
        victim = wait_for(
            "one worker registers", lambda: worker_names(client), 120, deployment.logs
        )
        (victim_id,) = victim
        condor("condor_rm", victim_id)
        wait_for(
            "a replacement registers, named by its own job id",
            lambda: worker_names(client) - {victim_id},
            120,
            deployment.logs,
        )
        assert victim_id not in deployment.live_jobs()


def test_a_held_job_is_replaced_and_its_hold_reason_logged(deployment: Deployment) -> None:
    with connect(deployment) as client:
        victim = wait_for(
            "one worker registers", lambda: worker_names(client), 120, deployment.logs
        )
        (victim_id,) = victim
        condor("condor_hold", "-reason", "disk quota exceeded (test)", victim_id)
        wait_for(
            "a replacement registers",
            lambda: worker_names(client) - {victim_id},
            120,
            deployment.logs,
        )
        wait_for(
            "the held job is removed from the queue",
            lambda: victim_id not in deployment.live_jobs(),
            60,
            deployment.logs,
        )
        log = deployment.scheduler_log.read_text()
        assert f"job {victim_id} held by HTCondor: disk quota exceeded (test)" in log


@pytest.mark.parametrize("deployment", [{"tls": True}], indirect=True)
def test_with_tls_by_default_workers_join_over_tls_and_a_client_without_it_is_refused(
    deployment: Deployment, tmp_path: Path
) -> None:
    assert deployment.certificates is not None
    with connect(deployment) as client:
        address = client.scheduler.address
        assert address.startswith("tls://127.0.0.1:"), address
        joined = wait_for(
            "the minimum worker joins over TLS",
            lambda: {a: w["name"] for a, w in client.scheduler_info()["workers"].items()},
            120,
            deployment.logs,
        )
        assert all(a.startswith("tls://") for a in joined), joined
        assert set(map(str, joined.values())) <= set(deployment.live_jobs())
        assert client.submit(sum, [1, 2, 3]).result() == 6
    assert_only_certified_clients_get_in(address, deployment.certificates, tmp_path)
