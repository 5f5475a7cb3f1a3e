"""TLS end to end against the Marathon stand-in: certificates are files on the agent.

Rendered with ``tls.enabled`` and a container image: every app mounts the agent folder
``tls.host_path`` read-only at ``tls.mount_path``. The stand-in plays the agent: its filesystem
root is a folder in tmp_path holding the certificates at ``tls.host_path``, and each task's
container path is mapped onto it. The scheduler, the scaler (configured by
DASK_DEPLOY_SCALER_CONFIG, whose ``scheduler.security`` names the mounted files) and the workers
(`dask worker --name $MESOS_TASK_ID`) run for real, from the rendered apps as posted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from distributed import Client

from dask_deploy.testing.marathon import MarathonStandIn
from marathon_support import (
    free_offered_port,
    marathon_standin,
    marathon_values,
    post_app,
    sandbox_logs,
    worker_task_ids,
)
from process_support import BURST_SCALER_VALUES, listening, wait_for
from render_support import render_over_defaults
from tls_support import (
    assert_only_certified_clients_get_in,
    burst_scales_up_over_tls,
    client_security,
    make_certificates,
    worker_addresses,
)

pytestmark = [pytest.mark.marathon, pytest.mark.integration]

HOST_PATH = "/etc/ssl/dask"  # on the agent
MOUNT_PATH = "/etc/dask/tls"  # in the containers


@pytest.fixture
def marathon(tmp_path: Path) -> Iterator[MarathonStandIn]:
    with marathon_standin(workdir=tmp_path / "sandboxes", agent_root=tmp_path / "agent") as standin:
        yield standin


def test_stand_in_maps_host_path_volumes_onto_the_agent_root(
    marathon: MarathonStandIn, tmp_path: Path
) -> None:
    agent_folder = tmp_path / "agent" / "srv" / "files"
    agent_folder.mkdir(parents=True)
    (agent_folder / "a.txt").write_text("from the agent\n")
    app = {
        "id": "/mounts/reader",
        "cmd": 'cat /mnt/files/a.txt "$IN_ENV" relative/a.txt > copy',
        "env": {"IN_ENV": "/mnt/files/a.txt"},
        "instances": 1,
        "cpus": 0.1,
        "mem": 64,
        "container": {
            "type": "MESOS",
            "docker": {"image": "unused"},
            "volumes": [
                {"containerPath": "/mnt/files", "hostPath": "/srv/files", "mode": "RO"},
                {"containerPath": "relative", "hostPath": "/srv/files", "mode": "RO"},
            ],
        },
    }
    answer = requests.post(f"{marathon.url}/v2/apps", json=app, timeout=5)
    assert answer.status_code == 201, answer.text
    # cat writes the three files one after another, and a task that ended is launched again
    # into a new sandbox: wait for a whole copy, in any sandbox, rather than read the first.
    copies = lambda: [p.read_text() for p in marathon.workdir.glob("mounts_reader.*/copy")]  # noqa: E731
    wait_for("the task copies the agent's file through each mount",
             lambda: "from the agent\n" * 3 in copies(), 30,
             lambda: f"{copies()}\n{sandbox_logs(marathon)}")  # fmt: skip


def test_tls_scheduler_scaler_and_workers_from_agent_files(
    marathon: MarathonStandIn, tmp_path: Path
) -> None:
    certificates = make_certificates(
        tmp_path / "agent" / HOST_PATH.lstrip("/"), ca="ca.pem", cert="tls.crt", key="tls.key"
    )
    port, host = free_offered_port(marathon), marathon.agent_host
    values = marathon_values(
        "e2e",
        marathon,
        port,
        free_offered_port(marathon),
        scaler=BURST_SCALER_VALUES,
        tls={"enabled": True, "host_path": HOST_PATH, "mount_path": MOUNT_PATH},
    )
    out = tmp_path / "rendered"
    render_over_defaults("marathon", values, out)
    config = yaml.safe_load((out / "scaler-config.yaml").read_text())
    assert config["scheduler"]["address"] == f"tls://{host}:{port}"
    assert config["scheduler"]["security"] == {
        "ca_file": f"{MOUNT_PATH}/ca.pem",
        "cert_file": f"{MOUNT_PATH}/tls.crt",
        "key_file": f"{MOUNT_PATH}/tls.key",
    }
    logs = lambda: sandbox_logs(marathon)  # noqa: E731
    for name in ("scheduler", "worker", "scaler"):
        app = (out / f"{name}-app.json").read_bytes()
        assert b'"hostPath": "/etc/ssl/dask"' in app, f"{name}-app.json mounts no certificates"
        post_app(marathon, app)

    wait_for("the scheduler listens", lambda: listening(port, host), 60, logs)

    def worker_tasks() -> set[str]:
        return worker_task_ids(marathon, "/e2e/worker")

    address = f"tls://{host}:{port}"
    with Client(address, security=client_security(certificates), timeout=60) as client:
        assert client.scheduler.address == address

        held, burst, peak = burst_scales_up_over_tls(client, lambda: marathon.launched, logs)
        assert client.gather(burst) == [None] * 40
        del burst

        wait_for("idle workers are retired", lambda: len(worker_tasks()) == 1, 90, logs)
        wait_for(
            "the scheduler agrees",
            lambda: set(worker_addresses(client)) == worker_tasks(),
            30,
            logs,
        )
        killed = set(peak) - worker_tasks()
        assert killed
        wait_for("the killed tasks end", lambda: killed <= marathon.ended.keys(), 30, logs)
        assert {marathon.ended[task] for task in killed} == {"TASK_KILLED"}
        assert held.result() == 49  # retired through the scheduler: the result moved first

    def scheduler_log() -> str:
        return "".join(p.read_text() for p in marathon.workdir.glob("e2e_scheduler.*/stderr"))

    assert "Retire worker" in scheduler_log(), sandbox_logs(marathon, "e2e_scheduler.")

    assert_only_certified_clients_get_in(address, certificates, tmp_path)
    wait_for(
        "the scheduler logs the refused handshake",
        lambda: "peer did not return a certificate" in scheduler_log(),
        10,
        lambda: sandbox_logs(marathon, "e2e_scheduler."),
    )

    answer = requests.delete(f"{marathon.url}/v2/groups/e2e", params={"force": "true"}, timeout=5)
    assert answer.status_code == 200, answer.text
    wait_for("every task is gone", lambda: not marathon.pids(), 30 + 30, logs)
