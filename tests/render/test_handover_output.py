"""Workers stopped from outside hand their data over first: the rendered Kubernetes, Docker and
Marathon workers load ``dask_deploy.worker_preload`` into nanny and worker, set
``DASK_DEPLOY_HANDOVER_SECONDS`` from ``worker.handover_timeout``, and get a grace period (between
SIGTERM and SIGKILL) that covers the handover and the nanny's stop after it.

Asserted on the parsed output, the way the resource manager reads it: the worker pod's ``args``
and ``env`` and ``terminationGracePeriodSeconds``; the Docker backend's options and the container
it creates from them (its ``StopTimeout``); the Marathon worker app's command, ``env`` and
``taskKillGracePeriodSeconds``. The end-to-end proof (a held result survives an outside SIGTERM)
is in tests/integration/{docker,kubernetes,marathon}/test_*_handover.py.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from dask_deploy.backends import BackendContext
from dask_deploy.backends.docker import load_settings, worker_container_spec
from dask_deploy.values import resolve_values
from dask_deploy.worker_preload import HANDOVER_ENV, NANNY_STOP_SECONDS
from render_support import render_with_settings

REPO = Path(__file__).resolve().parents[2]
PRELOAD = "dask_deploy.worker_preload"
GRACE_KEYS = {
    "kubernetes": "termination_grace_period",
    "docker": "stop_timeout",
    "marathon": "kill_grace_period",
}
SCENARIOS = [
    (backend, path.name.removesuffix("-values.yaml"))
    for backend in GRACE_KEYS
    for path in sorted((REPO / "tests" / "scenarios" / backend).glob("*-values.yaml"))
]

RenderScenario = Callable[[str, "Path | dict[str, object]", Path], Path]


@dataclass(frozen=True)
class WorkerLaunch:
    """What the resource manager runs for a worker, and how long it waits before SIGKILL."""

    argv: list[str]
    env: dict[str, str]
    grace: int


def kubernetes_worker(out: Path) -> WorkerLaunch:
    configmap = yaml.safe_load((out / "worker-configmap.yaml").read_text())
    pod = yaml.safe_load(configmap["data"]["worker-pod.yaml"])
    [container] = pod["spec"]["containers"]
    # args only: the image's entrypoint (tini, which passes SIGTERM on to `dask worker`) runs.
    assert "command" not in container
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return WorkerLaunch(container["args"], env, pod["spec"]["terminationGracePeriodSeconds"])


def docker_worker(out: Path) -> WorkerLaunch:
    config = yaml.safe_load((out / "scaler-config.yaml").read_text())
    options = config["backend"]["options"]
    context = BackendContext(config["deployment"], config["scheduler"]["address"], options)
    spec = worker_container_spec(load_settings(context), 0, 0.0)
    # The container's own StopTimeout: `docker stop` without -t waits as long as the scaler.
    assert spec["stop_timeout"] == options["stop_timeout"]
    return WorkerLaunch(spec["command"], spec["environment"], spec["stop_timeout"])


def marathon_worker(out: Path) -> WorkerLaunch:
    app = json.loads((out / "worker-app.json").read_text())
    first_line = app["cmd"].splitlines()[0]
    assert first_line.endswith(" &")
    return WorkerLaunch(
        shlex.split(first_line.removesuffix(" &")), app["env"], app["taskKillGracePeriodSeconds"]
    )


READERS = {"kubernetes": kubernetes_worker, "docker": docker_worker, "marathon": marathon_worker}


def preloads(argv: list[str]) -> dict[str, list[str]]:
    """The modules each preload option names: {"--preload-nanny": [...], "--preload": [...]}."""
    found: dict[str, list[str]] = {"--preload-nanny": [], "--preload": []}
    for option, value in itertools.pairwise(argv):
        if option in found:
            found[option].append(value)
    return found


def values_of(backend: str, name: str) -> dict[str, Any]:
    path = REPO / "tests" / "scenarios" / backend / f"{name}-values.yaml"
    return resolve_values(backend, values_files=[path], root=REPO / "templates").values


@pytest.mark.parametrize(("backend", "name"), SCENARIOS, ids=lambda v: str(v))
def test_workers_hand_over_within_a_grace_period_that_covers_it(
    render_scenario: RenderScenario, tmp_path: Path, backend: str, name: str
) -> None:
    values = values_of(backend, name)
    worker = values["worker"]
    launch = READERS[backend](
        render_scenario(backend, REPO / "tests" / "scenarios" / backend / f"{name}-values.yaml",
                        tmp_path)
    )  # fmt: skip
    assert launch.grace == worker[GRACE_KEYS[backend]]
    handover = worker["handover_timeout"]
    if not handover:
        assert preloads(launch.argv) == {"--preload-nanny": [], "--preload": []}
        assert HANDOVER_ENV not in launch.env
        return
    nanny = "--no-nanny" not in launch.argv
    assert preloads(launch.argv) == {
        "--preload-nanny": [PRELOAD] if nanny else [],
        "--preload": [PRELOAD],
    }
    assert launch.env[HANDOVER_ENV] == str(handover)
    assert handover + NANNY_STOP_SECONDS <= launch.grace


def test_the_scenarios_cover_handover_on_and_off() -> None:
    handovers = {values_of(b, n)["worker"]["handover_timeout"] for b, n in SCENARIOS}
    assert 0 in handovers and len(handovers) > 1


@pytest.mark.parametrize("backend", sorted(GRACE_KEYS))
def test_handover_off_loads_no_preload(
    render_scenario: RenderScenario, tmp_path: Path, backend: str
) -> None:
    launch = READERS[backend](
        render_scenario(backend, {"worker": {"handover_timeout": 0}}, tmp_path)
    )
    assert PRELOAD not in launch.argv and HANDOVER_ENV not in launch.env


@pytest.mark.parametrize("backend", sorted(GRACE_KEYS))
def test_a_handover_longer_than_the_grace_period_allows_is_refused(
    backend: str, tmp_path: Path
) -> None:
    grace_key = f"worker.{GRACE_KEYS[backend]}"
    rendered = render_with_settings(
        backend, {grace_key: 40, "worker.handover_timeout": 31}, tmp_path / "out"
    )
    assert rendered.returncode == 2, rendered.stderr
    assert rendered.stderr.count("\n") == 1, rendered.stderr
    assert "worker.handover_timeout: got 31, expected at most" in rendered.stderr
    assert f"{grace_key} - 10 (30)" in rendered.stderr
    assert not (tmp_path / "out").exists()
    accepted = render_with_settings(
        backend, {grace_key: 40, "worker.handover_timeout": 30}, tmp_path / "ok"
    )
    assert accepted.returncode == 0, accepted.stderr


#: Stands in for `dask worker` in the rendered Marathon task: logs every SIGTERM it gets, and
#: exits one second after the first, as a worker does once it has handed its data over.
COUNTING_WORKER = """
import signal, sys, time
received = []
def on_term(signum, frame):
    received.append(time.monotonic())
    print("SIGTERM", flush=True)
signal.signal(signal.SIGTERM, on_term)
print("started", flush=True)
while not received or time.monotonic() - received[0] < 1:
    time.sleep(0.05)
sys.exit(0)
"""


def test_a_marathon_kill_reaches_the_worker_once(tmp_path: Path) -> None:
    """Mesos kills a task by signalling its whole process tree; the task's shell must not send
    the worker a second SIGTERM, which `dask worker` answers by stopping at once (it handles
    only the first), cutting the handover short."""
    out = tmp_path / "rendered"
    rendered = render_with_settings("marathon", {"python": sys.executable}, out)
    assert rendered.returncode == 0, rendered.stderr
    lines = json.loads((out / "worker-app.json").read_text())["cmd"].splitlines()
    assert " -m dask worker " in lines[0]
    worker = tmp_path / "worker.py"
    worker.write_text(COUNTING_WORKER)
    log = tmp_path / "worker.log"
    lines[0] = f"{shlex.quote(sys.executable)} {worker} > {log} &"
    script = tmp_path / "task.sh"
    script.write_text("\n".join(lines) + "\n")
    task = subprocess.Popen(["bash", str(script)], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while "started" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, "the stand-in worker did not start"
            time.sleep(0.05)
        os.killpg(task.pid, signal.SIGTERM)  # Marathon's kill: the task's whole process tree
        assert task.wait(30) == 143
    finally:
        if task.poll() is None:
            os.killpg(task.pid, signal.SIGKILL)
            task.wait()
    assert log.read_text().split() == ["started", "SIGTERM"]
