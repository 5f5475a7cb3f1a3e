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
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client
from slurm_deployment import Deployment, deployment_values, submitted, worker_names

from process_support import wait_for
from slurm_support import Slurm
from tls_support import (
    Certificates,
    assert_only_certified_clients_get_in,
    client_security,
    make_certificates,
    worker_addresses,
)

pytestmark = pytest.mark.slurm


@pytest.fixture
def files(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "tls")


@pytest.fixture
def deployment(slurm: Slurm, files: Certificates, tmp_path: Path) -> Iterator[Deployment]:
    """Render with TLS on, sbatch the scheduler job, cancel everything afterwards."""
    tls = {
        "enabled": True,
        "generate": False,
        "ca_file": str(files.ca),
        "cert_file": str(files.cert),
        "key_file": str(files.key),
    }
    scaler = {"minimum": 0, "maximum": 2, "scale_down_window": 2, "startup_timeout": 60}
    values = deployment_values(f"tls-{uuid.uuid4().hex[:6]}", scaler, tls=tls)
    with submitted(slurm, values, tmp_path / "rendered") as deployed:
        yield deployed


def test_tls_scheduler_scaler_and_workers_refuse_clients_without_certificates(
    deployment: Deployment, files: Certificates, tmp_path: Path
) -> None:
    scheduler_file = deployment.scheduler_file
    wait_for(
        f"the scheduler job writes {scheduler_file}\n{deployment.logs()}",
        lambda: scheduler_file.exists() and scheduler_file.stat().st_size > 0,
        timeout=60,
    )
    address = json.loads(scheduler_file.read_text())["address"]
    assert address.startswith("tls://127.0.0.1:"), address

    security = client_security(files)
    with Client(scheduler_file=str(scheduler_file), security=security, timeout="30s") as c:
        squares = c.map(pow, range(12), [2] * 12)
        sleeps = c.map(time.sleep, [1.0] * 16, pure=False)
        wait_for(
            f"two worker jobs register\n{deployment.logs()}", lambda: len(worker_names(c)) == 2
        )
        c.gather(sleeps)
        assert c.gather(squares) == [x * x for x in range(12)]

        workers = worker_addresses(c)
        jobs = deployment.worker_jobs("all")
        assert set(workers) <= set(jobs), f"workers {workers} are not the jobs {jobs}"
        assert all(a.startswith("tls://127.0.0.1:") for a in workers.values()), workers

        assert_only_certified_clients_get_in(address, files, tmp_path)

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

    log = deployment.all_logs()
    for job, worker_address in workers.items():
        assert re.search(rf"retired .*\b{job}\b", log), f"the scaler did not retire {job}"
        assert f"Retired worker '{worker_address}'" in log, worker_address

    subprocess.run(["scancel", deployment.scheduler_job], check=True)
    wait_for("no job of the deployment remains", lambda: not deployment.all_live_jobs())


def test_tls_is_on_by_default_with_certificates_generated_for_the_deployment(
    slurm: Slurm, tmp_path: Path
) -> None:
    scaler = {"minimum": 1, "maximum": 1, "startup_timeout": 60}
    values = deployment_values(f"tlsgen-{uuid.uuid4().hex[:6]}", scaler)
    del values["tls"]  # the templates' default: TLS with generated certificates
    with submitted(slurm, values, tmp_path / "rendered") as deployment:
        scheduler_file = deployment.scheduler_file
        wait_for(
            f"the scheduler job writes {scheduler_file}\n{deployment.logs()}",
            lambda: scheduler_file.exists() and scheduler_file.stat().st_size > 0,
            timeout=60,
        )
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tls://"), address
        folder = deployment.folder.parent / f"{deployment.name}-tls"  # the default
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        files = Certificates(folder / "ca.pem", folder / "tls.crt", folder / "tls.key")
        assert sorted(p.name for p in folder.iterdir()) == ["ca.pem", "tls.crt", "tls.key"]
        assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
        with Client(address, security=client_security(files), timeout="30s") as client:
            wait_for(f"the worker registers\n{deployment.logs()}", lambda: worker_names(client))
            assert client.submit(sum, [1, 2, 3]).result() == 6
        assert_only_certified_clients_get_in(address, files, tmp_path)
