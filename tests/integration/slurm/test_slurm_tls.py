"""TLS end to end on a real SLURM: the rendered job scripts with `tls.enabled`, as a user runs them.

A throwaway CA and certificate in tmp_path; the slurm templates rendered with `tls.enabled`
pointing at those files; `sbatch scheduler-job.sh`. The scheduler listens on tls://, the scaler
beside it reaches it over TLS and submits worker jobs whose workers register with tls://
addresses under their job ids, then retires them through the scheduler and cancels exactly
their jobs. A client with the certificates computes; a client without them is refused.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client
from distributed.security import Security
from test_slurm_e2e import VENV, Deployment, render, wait_for, worker_names

from tls_support import Certificates, make_certificates, refused_without_certificate

pytestmark = pytest.mark.slurm


def security(files: Certificates) -> Security:
    return Security(  # type: ignore[no-untyped-call]
        tls_ca_file=str(files.ca),
        tls_client_cert=str(files.cert),
        tls_client_key=str(files.key),
        require_encryption=True,
    )


@pytest.fixture
def files(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "tls")


@pytest.fixture
def deployment(slurm: Any, files: Certificates, tmp_path: Path) -> Iterator[Deployment]:
    """Render with TLS on, sbatch the scheduler job, cancel everything afterwards."""
    name = f"tls-{uuid.uuid4().hex[:6]}"
    folder = tmp_path / "rendered"
    render(
        {
            "deployment": name,
            "python": {"venv": str(VENV)},
            "scheduler": {"host": "127.0.0.1", "dashboard_port": None, "memory_mib": 512},
            "worker": {
                "host": "127.0.0.1",
                "threads": 1,
                "memory_mib": 512,
                "walltime_minutes": 10,
                "lifetime_margin": 60,
                "lifetime_stagger": 0,
                "death_timeout": 20,
            },
            "scaler": {
                "minimum": 0,
                "maximum": 2,
                "interval": 0.5,
                "scale_down_window": 2,
                "startup_timeout": 60,
                "metrics_port": None,
                "cleanup_on_exit": True,
            },
            "tls": {
                "enabled": True,
                "ca_file": str(files.ca),
                "cert_file": str(files.cert),
                "key_file": str(files.key),
            },
        },
        folder,
    )
    submitted = subprocess.run(
        ["sbatch", "--parsable", "scheduler-job.sh"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    deployed = Deployment(name, folder, submitted.stdout.strip().split(";")[0])
    try:
        yield deployed
    finally:
        subprocess.run(["scancel", f"--name={name}-scheduler,{name}-worker"], check=False)
        print(deployed.logs())  # shown by pytest when the test failed
        print(slurm.log_tails())


def test_tls_scheduler_scaler_and_workers_refuse_clients_without_certificates(
    deployment: Deployment, files: Certificates, tmp_path: Path
) -> None:
    scheduler_file = deployment.folder / "scheduler.json"
    wait_for(
        f"the scheduler job writes {scheduler_file}\n{deployment.logs()}",
        lambda: scheduler_file.exists() and scheduler_file.stat().st_size > 0,
        timeout=60,
    )
    address = json.loads(scheduler_file.read_text())["address"]
    assert address.startswith("tls://127.0.0.1:"), address

    with Client(scheduler_file=str(scheduler_file), security=security(files), timeout="30s") as c:
        squares = c.map(pow, range(12), [2] * 12)
        sleeps = c.map(time.sleep, [1.0] * 16, pure=False)
        wait_for(
            f"two worker jobs register\n{deployment.logs()}", lambda: len(worker_names(c)) == 2
        )
        c.gather(sleeps)
        assert c.gather(squares) == [x * x for x in range(12)]

        workers = {str(w["name"]): a for a, w in c.scheduler_info()["workers"].items()}
        jobs = deployment.worker_jobs("all")
        assert set(workers) <= set(jobs), f"workers {workers} are not the jobs {jobs}"
        assert all(a.startswith("tls://127.0.0.1:") for a in workers.values()), workers

        # A client without the certificates is refused, whatever it tries.
        port = address.rsplit(":", 1)[1]
        with pytest.raises(OSError):
            Client(f"tcp://127.0.0.1:{port}", timeout="5s")
        assert refused_without_certificate(int(port), files.ca)
        stranger = make_certificates(tmp_path / "other-ca")
        with pytest.raises(OSError):
            Client(address, security=security(stranger), timeout="5s")

        # Idle: the scaler retires workers through the scheduler and cancels their jobs; the
        # results the client holds keep one worker, and survive the others' retirement.
        wait_for(
            f"one worker is left and the others' jobs end\n{deployment.logs()}",
            lambda: len(worker_names(c)) == 1 and set(deployment.worker_jobs()) == worker_names(c),
            timeout=60,
        )
        assert c.gather(squares) == [x * x for x in range(12)]
        del squares, sleeps
        wait_for(
            f"with nothing held, the last worker is retired\n{deployment.logs()}",
            lambda: not worker_names(c) and not deployment.worker_jobs(),
            timeout=60,
        )
        ended = deployment.worker_jobs("all")
        assert all(ended[job] in ("COMPLETED", "CANCELLED") for job in workers), ended

    log = "".join(p.read_text(errors="replace") for p in deployment.folder.glob("*.log"))
    for job, worker_address in workers.items():
        assert re.search(rf"retired .*\b{job}\b", log), f"the scaler did not retire {job}"
        assert f"Retired worker '{worker_address}'" in log, worker_address

    subprocess.run(["scancel", deployment.scheduler_job], check=True)
    wait_for("no job of the deployment remains", lambda: not deployment.all_live_jobs())
