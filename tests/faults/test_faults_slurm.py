"""Faults against a real SLURM: workers, the scaler, slurmctld and the scheduler, in a seeded order.

The real SLURM of scripts/slurm-up.sh (session fixture ``slurm``), the slurm templates rendered
with a unique deployment name, worker jobs submitted by the real ``dask-deploy scale`` through
sbatch and named by their job ids. The scheduler and the scaler run as host processes with the
rendered arguments and scaler configuration (the rendered scheduler job runs both in one
allocation and ends when either ends, so neither could be killed and restarted alone). The
scheduler loads tests/faults/ledger_preload.py by file path; the ledger is read over RPC after
every fault. Kinds of fault, in a random order drawn from a fixed seed:

- worker-sigkill: every process of a worker job SIGKILLed; the job ends without retirement.
- scaler-sigkill: the scaler SIGKILLed at a random point of its loop and started again with
  the other target (2 <-> 3). Going down, the new scaler retires a worker that holds results
  the client holds, and is SIGKILLed again while it does, then restarted once more.
- slurmctld-sigstop: slurmctld frozen for longer than the backend's command timeout (squeue and
  sbatch hang until the backend kills them), a worker SIGKILLed meanwhile, then SIGCONT.
- slurmctld-down: slurmctld stopped (SIGTERM; squeue and sbatch retry the connection until the
  backend's timeout kills them), a worker SIGKILLed meanwhile, then started again by
  scripts/slurm-up.sh (the controller alone, recovering its jobs).
- scheduler-restart: the scheduler SIGKILLed and started again on the same address; the results
  it held are gone (``keys_lost``) and resubmitted; its workers exit, the scaler replaces them.

The bounds are [target, 3], so a killed worker takes the count out of them and the scaler's
ticks back (``BoundsWatch``) are measured. The SLURM state is shared with concurrent sessions:
the controller is paused for a few seconds at most and restored in a ``finally``, and only
this deployment's jobs (by job name) are ever looked at or cancelled.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from bounds import BoundsWatch, fixed_policy, scaler_metrics_up, scaler_ticks
from distributed import Client, Future

import process_support
from process_support import free_port, tail
from render_support import render_over_defaults
from slurm_support import STATE, Slurm, slurm_up, slurm_up_env
from tally import MAX_TICKS_TO_BOUNDS, TALLY, FaultRecord

pytestmark = [pytest.mark.faults, pytest.mark.slurm, pytest.mark.integration]

BIN = Path(sys.executable).parent
LEDGER = Path(__file__).resolve().parent / "ledger_preload.py"
MAXIMUM = 3
INTERVAL = 0.5
#: Below the controller pause, so the backend's own timeout is what ends a hung squeue.
COMMAND_TIMEOUT = 3.0
PAUSE = (4.0, 6.0)
TIMEOUT = 90.0
#: The scaler's squeue runs at most every STATUS_INTERVAL seconds: a job killed from outside is
#: seen at the next listing, so getting back within bounds may take that many ticks more.
STATUS_INTERVAL = 2.0
MAX_TICKS = MAX_TICKS_TO_BOUNDS + math.ceil(STATUS_INTERVAL / INTERVAL)
#: squeue states of a live job (the tally's "requested, pending or running").
LIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING"})
PLAN = (
    ["worker-sigkill"] * 5
    + ["scaler-sigkill"] * 6
    + ["slurmctld-sigstop"] * 4
    + ["slurmctld-down"] * 3
    + ["scheduler-restart"] * 2
)


def wait_for(what: str, condition: Callable[[], Any], logs: Callable[[], str]) -> Any:
    return process_support.wait_for(what, condition, TIMEOUT, logs, poll=0.1)


def alive(pid: int) -> bool:
    """A process that exists and is no zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def job_processes(job_id: str) -> list[int]:
    """The Dask processes a worker job runs, found (as root may) by their SLURM_JOB_ID and
    SLURM_CONF: every xdist worker runs a SLURM of its own, so the same job id is another
    worker's job on another SLURM."""
    wanted = {f"SLURM_JOB_ID={job_id}".encode(), f"SLURM_CONF={STATE / 'slurm.conf'}".encode()}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if wanted <= set(environ) and b"dask" in command:
            found.append(int(entry.name))
    return found


class SlurmDeployment:
    """One rendered deployment: its host scheduler and scaler, its worker jobs, its faults."""

    def __init__(self, slurm: Slurm, folder: Path) -> None:
        self.slurm = slurm
        self.name = f"faults-{uuid.uuid4().hex[:6]}"
        self.folder = folder
        self.port = free_port()
        self.processes: list[subprocess.Popen[bytes]] = []
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.scaler: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.target = 2
        self.starts = Counter[str]()
        #: Jobs whose processes this test SIGKILLed: the only ones that may take results along.
        self.killed: set[str] = set()
        values = {
            "deployment": self.name,
            "python": {"venv": str(BIN.parent)},
            "scheduler": {"host": "127.0.0.1", "port": self.port, "dashboard_port": None},
            "worker": {
                "host": "127.0.0.1",
                "threads": 1,
                "memory_mib": 512,
                "walltime_minutes": 30,
                "lifetime_margin": 60,
                "lifetime_stagger": 0,
                "replacement_lead": 0,
                "death_timeout": 15,
                # One process per worker job (no nanny): lighter on a 2-core machine.
                "extra_args": ["--no-nanny"],
            },
            "scaler": {
                "policy": "fixed",
                "minimum": 2,
                "maximum": MAXIMUM,
                "interval": INTERVAL,
                "startup_timeout": 120,
                "status_interval": STATUS_INTERVAL,
                "metrics_port": 9090,
                "cleanup_on_exit": True,
            },
            # The scheduler runs here from the rendered arguments, not the scheduler job that
            # would generate the certificates: plain TCP.
            "tls": {"enabled": False},
        }
        render_over_defaults("slurm", values, folder)
        self.config = yaml.safe_load((folder / "scaler-config.yaml").read_text())
        # The worker jobs write into the log folder (slurm.log_directory), which the scheduler
        # job would make; SLURM fails a job whose --output folder is missing.
        (folder.parent / f"{self.config['deployment']}-logs").mkdir(exist_ok=True)

    @property
    def scheduler_file(self) -> Path:
        """The file the rendered jobs and scaler read (``<deployment>-scheduler.json``)."""
        return self.folder / self.config["scheduler"]["scheduler_file"]

    # --- what SLURM and the scheduler report ------------------------------------------------

    def jobs(self, timeout: float = 30) -> dict[str, str]:
        """Job id -> squeue state of this deployment's worker jobs (ended ones included)."""
        listed = subprocess.run(
            [
                "squeue",
                "--noheader",
                "--states=all",
                f"--name={self.name}-worker",
                "--format=%i|%T",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert listed.returncode == 0, f"squeue failed: {listed.stderr}\n{self.logs()}"
        return dict(line.split("|", 1) for line in listed.stdout.split())

    def jobs_if_answering(self) -> dict[str, str] | None:
        """Like :meth:`jobs`, or None while slurmctld does not answer within a second."""
        try:
            return self.jobs(timeout=1)
        except (subprocess.TimeoutExpired, AssertionError):
            return None

    def live(self, jobs: dict[str, str] | None = None) -> set[str]:
        """The live jobs (never more than the maximum: that would be a duplicate)."""
        live = {
            job for job, state in (self.jobs() if jobs is None else jobs).items() if state in LIVE
        }
        assert len(live) <= MAXIMUM, f"more jobs than the maximum: {sorted(live)}\n{self.logs()}"
        return live

    def logs(self) -> str:
        logs = [tail(self.folder / "scheduler.log", 15), tail(self.folder / "scaler.log", 40)]
        return "\n".join(logs) + "\n" + self.slurm.log_tails(10)

    # --- processes --------------------------------------------------------------------------

    def _start(self, role: str, argv: list[str]) -> subprocess.Popen[bytes]:
        self.starts[role] += 1
        with (self.folder / f"{role}.log").open("ab") as log:
            log.write(f"===== start {self.starts[role]}\n".encode())
            log.flush()
            process = subprocess.Popen(
                argv,
                cwd=self.folder,  # where the scheduler job would run them
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def start_scheduler(self) -> None:
        """The rendered scheduler command line, plus the fault ledger, on the fixed port."""
        self.scheduler = self._start(
            "scheduler",
            [
                str(BIN / "dask"),
                "scheduler",
                *("--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"),
                *("--preload", "dask_deploy.scheduler_preload", "--preload", str(LEDGER)),
                *("--scheduler-file", str(self.scheduler_file)),
            ],
        )

    def start_scaler(self, target: int) -> None:
        """`dask-deploy scale` with the rendered configuration, fixed at ``target`` workers."""
        self.target = target
        self.metrics_port = free_port()
        config = dict(self.config)
        config["policy"] = fixed_policy(target, minimum=target, maximum=MAXIMUM)
        config["metrics"] = {"host": "127.0.0.1", "port": self.metrics_port}
        config["backend"] = {
            "name": "slurm",
            "options": {**self.config["backend"]["options"], "command_timeout": COMMAND_TIMEOUT},
        }
        path = self.folder / f"scaler-config-{target}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.scaler = self._start(
            "scaler", [str(BIN / "dask-deploy"), "scale", "--config", path.name]
        )
        port = self.metrics_port
        wait_for("the scaler serves its metrics", lambda: scaler_metrics_up(port), self.logs)

    def kill_scaler(self) -> None:
        assert self.scaler is not None
        os.killpg(self.scaler.pid, signal.SIGKILL)
        self.scaler.wait()

    def kill_worker(self, job_id: str) -> None:
        pids = job_processes(job_id)
        assert pids, f"no process of job {job_id} found\n{self.logs()}"
        self.killed.add(job_id)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)

    def ticks(self) -> int:
        return scaler_ticks(self.metrics_port)

    def watch(self) -> BoundsWatch:
        return BoundsWatch(self.target, MAXIMUM, lambda: len(self.live()), self.ticks)

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


class Controller:
    """slurmctld of the shared test SLURM: freeze it, stop it, and always bring it back."""

    def pid(self) -> int:
        return int((STATE / "run" / "slurmctld.pid").read_text())

    def answers(self) -> bool:
        pinged = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
        return pinged.returncode == 0 and "UP" in pinged.stdout

    def freeze(self) -> None:
        os.kill(self.pid(), signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid(), signal.SIGCONT)

    def stop(self) -> None:
        pid = self.pid()
        os.kill(pid, signal.SIGTERM)  # it saves its state: the jobs survive, as in a real crash
        deadline = time.monotonic() + 30
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restore(self) -> subprocess.Popen[str]:
        """SIGCONT a frozen controller; scripts/slurm-up.sh restarts a stopped one (returned)."""
        try:
            self.thaw()
        except (OSError, ValueError):
            pass  # stopped, not frozen
        return subprocess.Popen(
            slurm_up(),
            env=slurm_up_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def restored(self, restoring: subprocess.Popen[str]) -> None:
        output, _ = restoring.communicate(timeout=300)
        assert restoring.returncode == 0, f"slurm-up.sh failed:\n{output}"


@pytest.fixture
def deployment(slurm: Slurm, tmp_path: Path) -> Iterator[SlurmDeployment]:
    deployed = SlurmDeployment(slurm, tmp_path / "rendered")
    try:
        yield deployed
    finally:
        # Whatever happened, slurmctld runs again for everybody who shares it.
        Controller().restored(Controller().restore())
        deployed.stop()
        subprocess.run(["scancel", f"--name={deployed.name}-worker"], check=False, timeout=60)


def test_faults_on_a_real_slurm_converge_and_lose_no_result_of_a_retired_worker(
    deployment: SlurmDeployment,
) -> None:
    d = deployment
    chooser = random.Random(20261128)
    plan = list(PLAN)
    chooser.shuffle(plan)
    controller = Controller()
    d.start_scheduler()
    wait_for("the scheduler file", d.scheduler_file.exists, d.logs)
    d.start_scaler(2)
    client = Client(f"tcp://127.0.0.1:{d.port}", timeout=60)
    held: list[Future] = []

    def connected() -> set[str]:
        # `dask worker` turns a numeric --name into an int: compare as text.
        return {str(w["name"]) for w in client.scheduler_info()["workers"].values()}

    def converged() -> bool:
        """At the target, every job running and its worker connected: nothing orphaned."""
        states = d.jobs()
        live = d.live(states)
        return (
            len(live) == d.target
            and all(states[job] == "RUNNING" for job in live)
            and connected() == live
        )

    def hold_on_every_worker() -> None:
        """Results the client holds on every worker, so any worker retired has some."""
        holders = {address for addresses in client.who_has(held).values() for address in addresses}
        for address in client.scheduler_info()["workers"]:
            if address not in holders:
                start = len(held)
                held.extend(
                    client.submit(
                        pow, n, 2, key=f"held-{n}", workers=[address], allow_other_workers=True
                    )
                    for n in range(start, start + 4)
                )
        assert client.gather(held) == [n * n for n in range(len(held))]

    def holders() -> set[str]:
        """Names of the workers that hold results the client holds."""
        workers = client.scheduler_info()["workers"]
        addresses = {a for addresses in client.who_has(held).values() for a in addresses}
        return {str(workers[a]["name"]) for a in addresses if a in workers}

    def ledger() -> dict[str, Any]:
        return client.sync(client.scheduler.fault_ledger)

    try:
        wait_for("the first two workers", converged, d.logs)
        for kind in plan:
            hold_on_every_worker()
            before = ledger()
            keys_before = {f.key for f in held}
            lost_before = Counter(
                {name: len(set(k) & keys_before) for name, k in before["lost_from"].items()}
            )
            computed_before = sum(before["computed"].get(key, 0) for key in keys_before)
            live_before, holding = d.live(), holders()
            watch = d.watch()
            keys_lost = None
            restoring: subprocess.Popen[str] | None = None
            if kind == "worker-sigkill":
                victim = chooser.choice(sorted(d.live()))
                d.kill_worker(victim)
                wait_for(f"job {victim} has ended", lambda v=victim: v not in d.live(), d.logs)
            elif kind == "scaler-sigkill":
                time.sleep(chooser.uniform(0, 2 * INTERVAL))  # a random point of its loop
                d.kill_scaler()
                going_down = d.target == MAXIMUM
                d.start_scaler(2 if going_down else MAXIMUM)
                if going_down:
                    kind = "scaler-sigkill+scale-down"
                    # Killed again while it retires a worker holding results, then restarted.
                    time.sleep(chooser.uniform(0, 3 * INTERVAL))
                    d.kill_scaler()
                    d.start_scaler(2)
                watch = d.watch()  # the new bounds
            elif kind in ("slurmctld-sigstop", "slurmctld-down"):
                victim = chooser.choice(sorted(d.live()))
                try:
                    if kind == "slurmctld-sigstop":
                        controller.freeze()
                    else:
                        controller.stop()
                    d.kill_worker(victim)
                    time.sleep(chooser.uniform(*PAUSE))
                finally:
                    restoring = controller.restore()
                # Over once slurmctld answers again and shows the job ended.
                wait_for(
                    f"slurmctld answers and job {victim} has ended",
                    lambda v=victim: (
                        (jobs := d.jobs_if_answering()) is not None and v not in d.live(jobs)
                    ),
                    d.logs,
                )
            else:  # scheduler-restart
                assert d.scheduler is not None
                old_workers = d.live()
                os.killpg(d.scheduler.pid, signal.SIGKILL)
                d.scheduler.wait()
                keys_lost = len(held)  # held by the scheduler that is gone
                held.clear()
                client.close(timeout=10)
                d.start_scheduler()
                client = Client(f"tcp://127.0.0.1:{d.port}", timeout=60)
                wait_for(
                    "the old workers have exited",
                    lambda old=old_workers: not old & d.live(),
                    d.logs,
                )
                lost_before, keys_before = Counter(), set()
            over = time.monotonic()
            ticks = watch.ticks_to_bounds(TIMEOUT, d.logs, limit=MAX_TICKS)
            wait_for(f"recovery from {kind}", converged, d.logs)
            recovered = time.monotonic()
            if restoring is not None:
                controller.restored(restoring)
                restoring = None
            if kind == "scaler-sigkill+scale-down":
                retired = live_before - d.live()
                assert len(retired) == 1 and not retired & d.killed, retired
                assert retired <= holding, f"{retired} held no result: nothing to prove"
            hold_on_every_worker()
            after = ledger()
            lost = Counter(
                {name: len(set(k) & keys_before) for name, k in after["lost_from"].items()}
            )
            lost.subtract(lost_before)
            from_removed = {name: n for name, n in lost.items() if n > 0 and name not in d.killed}
            assert not from_removed, (
                f"held results lost from workers the scaler removed: {from_removed}"
            )
            if keys_lost is None:
                keys_lost = sum(n for n in lost.values() if n > 0)
                recomputed = sum(after["computed"].get(k, 0) for k in keys_before) - computed_before
            else:
                recomputed = keys_lost  # resubmitted and computed again
            print(
                f"slurm fault {len(TALLY.faults) + 1}: {kind}: {ticks} ticks, "
                f"{recovered - over:.1f}s to recover, {keys_lost} held results lost "
                f"({sum(from_removed.values())} from removed workers), {recomputed} recomputed"
            )
            TALLY.faults.append(
                FaultRecord(
                    backend="slurm",
                    kind=kind,
                    recovery_seconds=recovered - over,
                    seconds_outside_bounds=watch.seconds_outside,
                    keys_lost_from_retired_workers=sum(from_removed.values()),
                    tasks_recomputed=recomputed,
                    ticks_to_bounds=ticks,
                    keys_lost=keys_lost,
                )
            )
        held.clear()
    finally:
        client.close()
    # Teardown by the product's own means: the scaler stops (SIGTERM, as scancel of the
    # scheduler job sends) and cleanup_on_exit retires and cancels every worker job.
    assert d.scaler is not None
    d.scaler.send_signal(signal.SIGTERM)
    assert d.scaler.wait(60) == 0, d.logs()
    deadline = time.monotonic() + TIMEOUT
    while (left := d.live()) and time.monotonic() < deadline:
        time.sleep(0.2)
    TALLY.instances_left_behind += len(left)
    assert not left, f"jobs left behind after teardown: {sorted(left)}\n{d.logs()}"
