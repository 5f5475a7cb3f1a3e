"""Observation over distributed's RPC: tcp:// without the preload, tls:// with dask's Security."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from distributed import Scheduler, Worker
from distributed.security import Security

from dask_deploy.config import SchedulerSettings, SecuritySettings
from dask_deploy.observe import connect

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


def make_certificates(folder: Path) -> SecuritySettings:
    """A CA and one certificate for 127.0.0.1, made with openssl (installed if missing)."""
    if shutil.which("openssl") is None:
        subprocess.run([str(REPO / "scripts" / "ensure-apt.sh"), "openssl"], check=True)
    ca_key, ca, key, csr, cert = (
        folder / n for n in ("ca.key", "ca.pem", "tls.key", "tls.csr", "tls.crt")
    )
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", str(key), "-out", str(csr))  # fmt: skip
    extensions = folder / "san.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-days", "1", "-extfile", str(extensions), "-out", str(cert))  # fmt: skip
    return SecuritySettings(ca_file=str(ca), cert_file=str(cert), key_file=str(key))


async def test_tls_snapshot_and_retirement(tmp_path: Path) -> None:
    files = make_certificates(tmp_path)
    security = Security(
        tls_ca_file=files.ca_file,
        tls_scheduler_cert=files.cert_file,
        tls_scheduler_key=files.key_file,
        tls_worker_cert=files.cert_file,
        tls_worker_key=files.key_file,
        tls_client_cert=files.cert_file,
        tls_client_key=files.key_file,
        require_encryption=True,
    )
    async with Scheduler(
        host="127.0.0.1", port=0, protocol="tls", security=security, dashboard_address="127.0.0.1:0"
    ) as scheduler:
        assert scheduler.address.startswith("tls://")
        async with Worker(
            scheduler.address, name="tls-worker", security=security, nthreads=1, dashboard=False
        ):
            link = connect(SchedulerSettings(address=scheduler.address, security=files))
            try:
                state = await link.observe(target_duration=None)
                assert [w.name for w in state.workers] == ["tls-worker"]
                assert state.workers[0].threads == 1 and state.workers[0].idle
                assert state.tasks_queued is None  # no preload on this scheduler: counts unknown
                assert state.workers_to_close == ("tls-worker",)
                assert await link.retire(["tls-worker"]) == {"tls-worker"}
                assert await link.worker_names() == frozenset()
            finally:
                await link.close()


async def test_tcp_without_tls_settings_cannot_reach_a_tls_scheduler(tmp_path: Path) -> None:
    files = make_certificates(tmp_path)
    security = Security(
        tls_ca_file=files.ca_file,
        tls_scheduler_cert=files.cert_file,
        tls_scheduler_key=files.key_file,
        require_encryption=True,
    )
    async with Scheduler(
        host="127.0.0.1", port=0, protocol="tls", security=security, dashboard_address="127.0.0.1:0"
    ) as scheduler:
        link = connect(SchedulerSettings(address=scheduler.address))
        try:
            with pytest.raises((OSError, TypeError)):
                await link.observe(target_duration=None)
        finally:
            await link.close()


async def test_the_summary_gives_the_snapshot_of_the_stock_handlers(scheduler: Scheduler) -> None:
    """The one-call summary and the older calls (counts handler and stock handlers) agree."""
    from distributed import Client, Event

    from dask_deploy.observe import RpcScheduler
    from dask_deploy.scheduler_preload import SUMMARY_HANDLER

    def block(event: Event) -> None:
        event.wait()

    async with (
        Worker(scheduler.address, name="one", nthreads=1, dashboard=False) as one,
        Worker(scheduler.address, name="two", nthreads=2, dashboard=False) as two,
        Worker(scheduler.address, name="three", nthreads=1, dashboard=False),
        Worker(scheduler.address, name="four", nthreads=1, dashboard=False) as four,
        Client(scheduler.address, asynchronous=True) as client,
    ):
        release = Event(client=client)
        data = [
            client.submit(bytes, size, workers=[w.address], pure=False)
            for size, w in ((10_000, one), (1_000, two), (1_000, two), (1_000, four))
        ]
        running = client.submit(block, release, workers=[two.address], pure=False)
        await client.gather(data)
        while not scheduler.workers[two.address].processing:
            await asyncio.sleep(0.05)
        summary = RpcScheduler(scheduler.address, connection_args={})
        older = RpcScheduler(scheduler.address, connection_args={})
        # The two snapshots must see one state: a heartbeat reporting how long `block` has run
        # raises its prefix's estimate (2 x max_exec_time), hence work_seconds, in between.
        # Heartbeats arriving meanwhile wait; the handler is synchronous, so none is half done.
        heartbeats_resume = asyncio.Event()
        stock_heartbeat = scheduler.handlers["heartbeat_worker"]

        async def heartbeat_after_the_snapshots(**message: Any) -> Any:
            await heartbeats_resume.wait()
            return stock_heartbeat(**message)

        scheduler.handlers["heartbeat_worker"] = heartbeat_after_the_snapshots
        try:
            handler = scheduler.handlers.pop(SUMMARY_HANDLER)
            try:
                before = await older.observe(target_duration=1.0)
            finally:
                scheduler.handlers[SUMMARY_HANDLER] = handler
            now = await summary.observe(target_duration=1.0)
        finally:
            scheduler.handlers["heartbeat_worker"] = stock_heartbeat
            heartbeats_resume.set()
        await release.set()
        await running
        await summary.close()
        await older.close()
    assert before.tasks_queued is not None  # the older path had the counts handler
    assert now == before
    # idle workers first, the fewest bytes first; the busy one last
    assert now.workers_to_close == ("three", "four", "one", "two")
    assert {w.name: w.stored_bytes for w in now.workers}["one"] == 10_000
    assert (now.tasks_processing, now.adaptive_target) == (1, 1)  # the three idle ones can go
