"""A worker task killed from outside (an operator's kill, a draining agent) hands the result it
holds to another worker through the scheduler before it exits.

On the Marathon stand-in, which kills a task as Mesos' command executor does: SIGTERM to the
task's whole process group, SIGKILL after the app's taskKillGracePeriodSeconds. The three
rendered apps run there (commands on the agent, this Python); the scheduler app carries the
fault ledger as an extra preload, the scaler keeps two workers, and the worker app loads
dask_deploy.worker_preload into nanny and worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from distributed import Client

from dask_deploy.testing.marathon import MarathonStandIn
from handover_support import LEDGER_PRELOAD, assert_handed_over, hold_on, worker_names
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


@pytest.fixture
def marathon(tmp_path: Path) -> Iterator[MarathonStandIn]:
    with marathon_standin(workdir=tmp_path / "sandboxes") as standin:
        yield standin


def test_a_held_result_survives_a_marathon_kill_of_its_worker_task(
    marathon: MarathonStandIn, tmp_path: Path
) -> None:
    port, host = free_offered_port(marathon), marathon.agent_host
    scaler = {
        "policy": "fixed",
        "minimum": 2,
        "maximum": 2,
        "interval": 0.5,
        "startup_timeout": 120,
        "metrics_port": None,
    }
    values = marathon_values(
        "handover",
        marathon,
        port,
        free_offered_port(marathon),
        image={"repository": None},
        scaler=scaler,
    )
    values["scheduler"]["extra_args"] = ["--preload", str(LEDGER_PRELOAD)]
    # With the nanny, as rendered by default; the grace period covers handover + 10 s.
    values["worker"] |= {"nanny": True, "kill_grace_period": 60, "handover_timeout": 30}
    out = tmp_path / "rendered"
    render_over_defaults("marathon", values, out)
    for name in ("scheduler", "worker", "scaler"):
        post_app(marathon, (out / f"{name}-app.json").read_bytes())

    def logs() -> str:
        return sandbox_logs(marathon)

    wait_for("the scheduler listens", lambda: listening(port, host), 60, logs)
    with Client(f"tcp://{host}:{port}", timeout=60) as client:
        wait_for("two worker tasks register", lambda: len(worker_names(client)) == 2, 120, logs)
        leaver = sorted(worker_names(client))[0]  # its task id
        held = hold_on(client, leaver)
        # Marathon's kill from outside, without scale: the app keeps two instances.
        answer = requests.post(
            f"{marathon.url}/v2/tasks/delete", json={"ids": [leaver]}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        stderr = marathon.workdir / leaver / "stderr"
        assert_handed_over(client, held, leaver, lambda: stderr.read_text(errors="replace"), logs)
        wait_for("the killed task ends", lambda: leaver in marathon.ended, 90, logs)
        assert marathon.ended[leaver] == "TASK_KILLED"
    requests.delete(f"{marathon.url}/v2/groups/handover", params={"force": "true"}, timeout=5)
