"""A worker Marathon cannot launch (no Mesos offer has the CPUs): the scaler reads why from
Marathon's launch queue (``/v2/queue``), says it once, holds further scale-ups and does not
cancel and re-ask for it at every startup timeout.

The stand-in's agent has CPUs for the scheduler, the scaler and one worker; the fixed policy
asks for two workers.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from distributed import Client

from dask_deploy.testing.marathon import MarathonStandIn
from marathon_support import (
    free_offered_port,
    marathon_standin,
    marathon_values,
    post_app,
    sandbox_logs,
)
from process_support import listening, wait_for
from render_support import render_over_defaults

pytestmark = [pytest.mark.marathon, pytest.mark.integration]

WORKER_APP = "/stuck/worker"
QUEUED = "stuck_worker.queued-0"


@pytest.fixture
def marathon(tmp_path: Path) -> Iterator[MarathonStandIn]:
    with marathon_standin(workdir=tmp_path / "sandboxes") as standin:
        yield standin


def test_an_instance_no_offer_fits_is_reported_once_and_held(
    marathon: MarathonStandIn, tmp_path: Path
) -> None:
    port, host = free_offered_port(marathon), marathon.agent_host
    scaler = {"policy": "fixed", "minimum": 2, "maximum": 2, "interval": 0.5}
    metrics_port = free_offered_port(marathon)
    # The first worker task must register within the startup timeout, counted from its
    # stagedAt: longer than a task takes to boot on a loaded machine.
    scaler |= {"startup_timeout": 10, "metrics_port": metrics_port}
    values = marathon_values(
        "stuck", marathon, port, free_offered_port(marathon), image={"repository": None},
        scaler=scaler,
    )  # fmt: skip
    out = tmp_path / "rendered"
    render_over_defaults("marathon", values, out)
    apps = {name: json.loads((out / f"{name}-app.json").read_text()) for name in
            ("scheduler", "worker", "scaler")}  # fmt: skip
    cpus = sum(app["cpus"] for app in apps.values()) + apps["worker"]["cpus"] / 2
    marathon.agent_resources = {"cpus": cpus, "mem": 1e6, "disk": 1e6, "gpus": 0}
    for name in ("scheduler", "worker", "scaler"):
        post_app(marathon, (out / f"{name}-app.json").read_bytes())
    logs = lambda: sandbox_logs(marathon)  # noqa: E731
    wait_for("the scheduler listens", lambda: listening(port, host), 60, logs)

    def scaler_log() -> str:
        return "\n".join(
            path.read_text(errors="replace")
            for path in marathon.workdir.glob("stuck_scaler.*/stderr")
        )

    def ticks() -> float:
        url = f"http://{host}:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith("dask_deploy_ticks_total "):
                    return float(line.split()[1])
        return 0.0

    def stuck_lines() -> list[str]:
        return [line for line in scaler_log().splitlines() if "cannot start" in line]

    with Client(f"tcp://{host}:{port}", timeout=60) as client:
        wait_for(
            "one worker registers",
            lambda: client.scheduler_info()["workers"],
            90,
            logs,
        )
        wait_for("the scaler says why the second cannot start", stuck_lines, 60, logs)
        queue = requests.get(f"{marathon.url}/v2/queue", timeout=5).json()["queue"]
        (entry,) = queue
        assert entry["count"] == 1 and entry["app"]["id"] == WORKER_APP
        summary = entry["processedOffersSummary"]
        assert {"reason": "InsufficientCpus", "declined": 1, "processed": 1} in summary[
            "rejectSummaryLastOffers"
        ]
        # Many startup timeouts later (counted in ticks), nothing was cancelled and asked again.
        launched = set(marathon.launched)
        start = ticks()
        wait_for("40 ticks: 2 startup timeouts", lambda: ticks() >= start + 40, 90, logs)
        assert len(stuck_lines()) == 1, stuck_lines()
        assert f"cannot start {QUEUED}: no Mesos offer fits" in stuck_lines()[0]
        assert "InsufficientCpus (1 of 1)" in stuck_lines()[0]
        assert "not connected for" not in scaler_log()
        app = requests.get(f"{marathon.url}/v2/apps{WORKER_APP}", timeout=5).json()["app"]
        assert app["instances"] == 2
        assert set(marathon.launched) == launched
