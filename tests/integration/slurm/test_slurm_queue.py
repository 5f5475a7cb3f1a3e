"""A full cluster on a real SLURM: queue waits and walltime handovers.

A blocker job holds every CPU but the few a test leaves free. A worker job pending for
Resources is waiting, not stuck: the scaler keeps it (its place in the queue) far longer than
``startup_timeout`` and logs why it waits. Workers reaching their walltime hand their held
results over through the scheduler, generation after generation, while their replacements can
only start when they leave.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from distributed import Client
from slurm_deployment import cluster_full_but, deployment_values, submitted, worker_names

from process_support import wait_for
from slurm_support import Slurm

pytestmark = pytest.mark.slurm


def reasons(job_name: str) -> dict[str, tuple[str, str]]:
    """Job id -> (state, reason) of every job with this name, ended ones included."""
    output = subprocess.run(
        ["squeue", "--noheader", "--states=all", f"--name={job_name}", "--format=%i|%T|%r"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {i: (t, r) for i, t, r in (line.split("|") for line in output.splitlines())}


def test_a_job_pending_for_resources_is_never_cancelled_for_being_slow(
    slurm: Slurm, tmp_path: Path
) -> None:
    name = f"queue-{uuid.uuid4().hex[:6]}"
    # startup_timeout: long enough for a worker to start on a loaded machine once its job runs,
    # short beside the time the job is kept waiting in the queue.
    scaler = {"policy": "fixed", "minimum": 1, "maximum": 1, "startup_timeout": 10}
    scaler["status_interval"] = 1
    values = deployment_values(name, scaler)
    with cluster_full_but(1, tmp_path), submitted(slurm, values, tmp_path / "rendered") as d:
        wait_for(
            "the worker job pends for Resources",
            lambda: [s for s in reasons(d.worker_job_name).values() if s[1] == "Resources"],
            timeout=60,
        )
        wait_for(
            "the scaler says why the job waits",
            lambda: "waits in the queue: Resources" in d.logs(),
            timeout=30,
        )
        (job,) = reasons(d.worker_job_name)
        # Three startup timeouts in the queue: still the same job, still pending, never replaced.
        queued_until = time.monotonic() + 3 * scaler["startup_timeout"]
        while time.monotonic() < queued_until:
            assert reasons(d.worker_job_name) == {job: ("PENDING", "Resources")}, d.logs()
            time.sleep(1)
        assert "not connected for" not in d.logs()
        subprocess.run(["scancel", f"--name=blocker-{tmp_path.name}"], check=True)
        with Client(scheduler_file=str(d.scheduler_file), timeout="30s") as client:
            wait_for("the job starts and its worker registers", lambda: worker_names(client))
            assert worker_names(client) == {job}


HELD_JOBS = "PENDING,CONFIGURING,RUNNING"


def test_held_results_survive_three_walltime_generations_on_a_full_cluster(
    slurm: Slurm, tmp_path: Path
) -> None:
    # Two workers of one minute each, on a cluster with room for exactly two: a replacement can
    # only start when a leaving job ends, so every handover is the scaler's, at the last safe
    # moment or once the replacement registered, never the worker's own --lifetime.
    name = f"wall-{uuid.uuid4().hex[:6]}"
    scaler = {"policy": "fixed", "minimum": 2, "maximum": 2, "startup_timeout": 120}
    scaler |= {"status_interval": 1, "replacement_surge": 1}
    values = deployment_values(name, scaler)
    values["worker"] |= {
        "walltime_minutes": 10,
        "handover_margin": 40,
        "lifetime_margin": 30,
        "lifetime_stagger": 0,
        "replacement_lead": 5,
    }

    def one_minute_walltime(folder: Path) -> None:
        # The values allow 10 minutes at least; the rendered script is the user's to edit.
        script = folder / "worker-job.sh"
        text = script.read_text().replace("#SBATCH --time=10\n", "#SBATCH --time=1\n")
        # The backstop --lifetime ten seconds before SLURM's kill.
        script.write_text(text.replace("--lifetime 570s", "--lifetime 50s"))

    ledger = tmp_path / "ledger"  # one line per execution of a held task
    rendered = tmp_path / "rendered"
    with (
        cluster_full_but(3, tmp_path),
        submitted(slurm, values, rendered, one_minute_walltime) as d,
    ):
        worker_script = (d.folder / "worker-job.sh").read_text()
        assert "--time=1\n" in worker_script and "--lifetime 50s" in worker_script
        scheduler_file = d.scheduler_file
        wait_for("the scheduler writes its file", scheduler_file.exists, timeout=60)
        with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
            wait_for("two workers register", lambda: len(worker_names(client)) == 2)
            commands = [f"echo {i} >> {ledger}" for i in range(20)]
            held = client.map(os.system, commands, pure=False)
            assert client.gather(held) == [0] * 20
            seen: set[str] = set()
            most_held = 0
            deadline = time.monotonic() + 240
            # Three generations of two workers each, under a steady trickle of small tasks.
            while len(seen) < 6:
                assert time.monotonic() < deadline, f"workers seen: {seen}\n{d.logs()}"
                seen |= worker_names(client)
                most_held = max(most_held, len(d.worker_jobs(HELD_JOBS)))
                assert most_held <= 3, f"{d.worker_jobs(HELD_JOBS)} held, maximum + surge is 3"
                client.submit(time.sleep, 0.2, pure=False).result(timeout=120)
                time.sleep(0.5)
            assert client.gather(held) == [0] * 20
            executions = sorted(int(line) for line in ledger.read_text().split())
            assert executions == list(range(20)), "a held result was lost and recomputed"
        logs = d.all_logs()
        assert "lose already computed" not in logs
        assert "handing over" in logs
