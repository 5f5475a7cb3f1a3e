"""The ssh backend end to end: real OpenSSH servers on 127.0.0.2-4, real Dask workers.

Every "host" is this machine behind its own sshd (scripts/sshd-up.sh), with its own host key
checked against known_hosts. The workers listen on their host's address, so the scheduler
sees where each one runs. Their state folder is shared (one machine) but the names differ.
"""

from __future__ import annotations

import operator
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, Scheduler

from dask_deploy.scheduler_preload import dask_setup
from scaler_process_support import (
    LostResults,
    ScalerProcess,
    retired_names,
    scaler_config,
    until,
    worker_names,
)
from ssh_support import SshServers

pytestmark = [pytest.mark.ssh, pytest.mark.integration]

DEPLOYMENT = "e2e"


@pytest.fixture
async def scheduler() -> AsyncIterator[Scheduler]:
    async with Scheduler(host="127.0.0.1", port=0, dashboard_address="127.0.0.1:0") as s:
        dask_setup(s)
        s.add_plugin(LostResults(), name="lost-results")
        yield s


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """The workers' state folder; whatever still runs from it is killed afterwards."""
    folder = tmp_path / "hosts-state"
    yield folder
    for pgid in live_workers(folder).values():
        os.killpg(pgid, signal.SIGKILL)


def live_workers(folder: Path) -> dict[str, int]:
    """Worker name -> process group of every worker whose recorded group still runs."""
    found = {}
    for record in folder.glob("*.pgid"):
        try:
            pgid = int(record.read_text().split()[0])
            os.killpg(pgid, 0)
        except (OSError, ValueError, IndexError):
            continue
        found[record.name.removesuffix(".pgid")] = pgid
    return found


def host_of(name: str) -> str:
    """>>> host_of("e2e-127.0.0.2-0")  -> "127.0.0.2" """
    return name.removeprefix(f"{DEPLOYMENT}-").rsplit("-", 1)[0]


def ssh_options(sshd: SshServers, state: Path, **more: Any) -> dict[str, Any]:
    return {
        "hosts": [{"host": host, "max_workers": 2} for host in sshd.hosts],
        **sshd.options(),
        "state_dir": str(state),
        "python": sys.executable,
        "connect_timeout": 5,
        "stop_timeout": 10,
        "worker_args": [
            "--host",
            "{host}",
            "--nthreads",
            "1",
            "--memory-limit",
            "512MiB",
            "--death-timeout",
            "30",
            "--no-dashboard",
        ],
        **more,
    }


def burst(client: Client, count: int) -> list[Any]:
    """``count`` tasks of half a second each; the workers cannot import this test module."""
    return list(client.map(time.sleep, [0.5] * count, pure=False))


def lost(scheduler: Scheduler) -> int:
    plugin = scheduler.plugins["lost-results"]
    assert isinstance(plugin, LostResults)
    return sum(plugin.lost.values())


async def test_burst_spreads_over_hosts_and_idle_removes_exactly_the_retired(
    scheduler: Scheduler, sshd: SshServers, state: Path, tmp_path: Path
) -> None:
    config = scaler_config(scheduler, "ssh", ssh_options(sshd, state), maximum=5)
    scaler = ScalerProcess(config, tmp_path / "scaler").start()

    def logs() -> str:
        return scaler.tail()

    try:
        async with Client(scheduler.address, asynchronous=True) as client:
            futures = burst(client, 60)
            await until("5 workers run", lambda: len(worker_names(scheduler)) == 5, logs)
            # Every worker that ran, collected at the peak and after the burst: the 2 s window
            # may retire the first idle one while the last tasks still run.
            started = set(live_workers(state))
            hosts = [host_of(name) for name in worker_names(scheduler)]
            assert sorted(set(hosts)) == list(sshd.hosts), "least loaded first: every host used"
            assert max(hosts.count(h) for h in sshd.hosts) <= 2, "a host got more than max"
            for worker in scheduler.workers.values():
                assert worker.host == host_of(str(worker.name)), "a worker runs on another host"
            held = client.map(operator.neg, range(5))  # results kept on the workers
            assert await client.gather(futures) == [None] * 60
            assert await client.gather(held) == [0, -1, -2, -3, -4]
            started |= set(live_workers(state))
            del futures

            # Idle: retired through the scheduler, then removed; held results stay.
            await until("idle workers are retired", lambda: len(worker_names(scheduler)) <= 1, logs)
            await until(
                "their processes end",
                lambda: set(live_workers(state)) == worker_names(scheduler),
                logs,
            )
            assert await client.gather(held) == [0, -1, -2, -3, -4]
            assert lost(scheduler) == 0
        removed = started - set(live_workers(state))
        assert removed and removed == retired_names(scaler.text()), (
            "the workers removed are exactly the ones the scheduler retired\n" + logs()
        )
    finally:
        await scaler.stop()


async def test_a_restarted_scaler_finds_the_workers_and_removes_exactly_one(
    scheduler: Scheduler, sshd: SshServers, state: Path, tmp_path: Path
) -> None:
    options = ssh_options(sshd, state)
    first = ScalerProcess(scaler_config(scheduler, "ssh", options, minimum=3), tmp_path / "a")
    first.start()
    second = None
    try:
        await until("3 workers run", lambda: len(worker_names(scheduler)) == 3, first.tail)
        await first.stop()
        before = set(live_workers(state))
        assert before == worker_names(scheduler), "workers outlive a stopped scaler"

        # The new scaler wants 2: it must find the 3, start none and remove exactly one.
        second = ScalerProcess(scaler_config(scheduler, "ssh", options, minimum=2), tmp_path / "b")
        second.start()
        await until("one worker is retired", lambda: len(worker_names(scheduler)) == 2, second.tail)
        await until(
            "its process ends", lambda: len(live_workers(state)) == 2, second.tail, timeout=30
        )
        after = set(live_workers(state))
        assert after < before
        assert before - after == retired_names(second.text())
        assert "started " not in second.text(), "the restarted scaler started a duplicate"
    finally:
        await first.stop()
        if second is not None:
            await second.stop()


async def test_a_host_whose_sshd_stops_is_skipped_and_nothing_is_lost(
    scheduler: Scheduler, sshd: SshServers, state: Path, tmp_path: Path
) -> None:
    # No scale-down during this test (a long window): every change of count is the backend's.
    options = ssh_options(sshd, state, hosts=[{"host": h, "max_workers": 3} for h in sshd.hosts])
    config = scaler_config(
        scheduler,
        "ssh",
        options,
        minimum=3,
        maximum=5,
        options={"scale_down_window": 600, "scale_down_window_min": 600},
    )
    scaler = ScalerProcess(config, tmp_path / "scaler").start()
    down = sshd.hosts[1]
    try:
        await until("a worker per host", lambda: len(worker_names(scheduler)) == 3, scaler.tail)
        (silent_worker,) = [n for n in worker_names(scheduler) if host_of(n) == down]
        sshd.stop(down)
        await until(
            f"the scaler says it skips {down}",
            lambda: f"ssh host {down} skipped" in scaler.text(),
            scaler.tail,
        )
        async with Client(scheduler.address, asynchronous=True) as client:
            futures = burst(client, 100)  # outlasts a boot well (see the next burst)
            held = client.map(operator.neg, range(5))
            await until(
                "the burst adds 2 workers", lambda: len(worker_names(scheduler)) == 5, scaler.tail
            )
            assert await client.gather(futures) == [None] * 100
            del futures
            hosts = [host_of(name) for name in worker_names(scheduler)]
            assert hosts.count(down) == 1, "the silent host's worker counts; none added there"

            # The silent host really dies: once the scheduler lost its worker, the scaler
            # counts it as exited (4 requested), and new work goes to the hosts that answer.
            os.killpg(live_workers(state)[silent_worker], signal.SIGKILL)
            await until(
                "the lost worker no longer counts as requested",
                lambda: (
                    scaler.metric("dask_deploy_requested_workers") == 4
                    and silent_worker not in worker_names(scheduler)
                ),
                scaler.tail,
            )
            # Work that clearly outlasts a boot: the policy asks only for workers that would
            # register while work is left (issue 18), and 50 half-second tasks on four
            # workers are done about when a fifth would register.
            futures = burst(client, 150)
            await until(
                "the next burst brings a fifth worker again",
                lambda: len(worker_names(scheduler)) == 5,
                scaler.tail,
            )
            assert await client.gather(futures) == [None] * 150
            assert all(host_of(n) != down for n in worker_names(scheduler))
            assert await client.gather(held) == [0, -1, -2, -3, -4]
            assert lost(scheduler) == 0
        assert scaler.text().count(f"ssh host {down} skipped") == 1, "one line per outage"
        sshd.start(down)
        await until(
            f"{down} answers again",
            lambda: f"ssh host {down} answers again" in scaler.text(),
            scaler.tail,
        )
        assert "Traceback" not in scaler.text()
    finally:
        sshd.start(down)
        await scaler.stop()


async def test_bad_host_key_unreachable_host_and_failing_start_each_log_one_line(
    scheduler: Scheduler, sshd: SshServers, state: Path, tmp_path: Path
) -> None:
    good, forged = sshd.hosts[0], sshd.hosts[2]
    # known_hosts where the second host's entry holds the first host's key: a changed key.
    entries = dict(line.split(" ", 1) for line in sshd.known_hosts.read_text().splitlines())
    good_key = entries[f"[{good}]:{sshd.port}"]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{good}]:{sshd.port} {good_key}\n[{forged}]:{sshd.port} {good_key}\n")
    unreachable = "127.0.0.9"  # nothing listens there
    options = ssh_options(
        sshd,
        state,
        known_hosts=str(known_hosts),
        hosts=[{"host": h, "max_workers": 2} for h in (forged, unreachable, good)],
    )
    scaler = ScalerProcess(scaler_config(scheduler, "ssh", options, minimum=2), tmp_path / "s")
    scaler.start()
    try:
        await until(
            "2 workers on the good host", lambda: len(worker_names(scheduler)) == 2, scaler.tail
        )
        assert {host_of(n) for n in worker_names(scheduler)} == {good}
        await scaler.wait_ticks(6)  # ticks go on; each problem stays one line
        text = scaler.text()
        assert text.count(f"ssh host {forged} skipped") == 1
        assert "Host key verification failed" in text
        assert text.count(f"ssh host {unreachable} skipped") == 1
        await scaler.stop()

        # A start command that fails on the host: one line naming it; the scaler keeps going.
        broken = {**options, "python": "/nonexistent/python3", "hosts": [{"host": good}]}
        again = ScalerProcess(
            scaler_config(scheduler, "ssh", broken, minimum=3, deployment="broken"),
            tmp_path / "broken",
        )
        again.start()
        await until(
            "the failure is logged",
            lambda: "/nonexistent/python3: command not found" in again.text(),
            again.tail,
        )
        await again.wait_ticks(6)
        assert again.process is not None and again.process.poll() is None
        assert again.text().count("/nonexistent/python3: command not found") == 1
        await again.stop()
    finally:
        await scaler.stop()
