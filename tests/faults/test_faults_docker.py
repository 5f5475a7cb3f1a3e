"""Faults against the real Docker Engine: worker containers SIGKILLed, the scaler SIGKILLed and
restarted, engine API calls failing (5xx, 409, 403, no answer), the scheduler restarted, and
scale-downs that retire workers holding the client's results while faults happen.

A real scheduler (host process, with the fault ledger preloaded by file path) and the real
``dask-deploy scale`` (host process, configuration rendered from templates/docker) whose docker
backend reaches the engine through :class:`DockerFaultProxy`; worker containers from the
project's worker image on the host network. Each fault is recorded in the tally; live
instances are the deployment's containers as the engine reports them (created or running).
The fixed target is also the minimum and the maximum, so every fault takes the count out of
bounds, and restarted scalers flip it between 1 and 2 to make them retire or launch.
"""

from __future__ import annotations

import operator
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from bounds import BoundsWatch, fixed_policy, scaler_ticks
from distributed import Client, Future, wait
from docker_fault_proxy import TIMEOUT, DockerFaultProxy

from process_support import free_port, start, tail
from render_support import render_over_defaults
from tally import TALLY, FaultRecord

pytestmark = [
    pytest.mark.faults,
    pytest.mark.docker,
    pytest.mark.integration,
    # The host's Python is a 3.11 patch release other than Debian's 3.11.2 in the images;
    # distributed warns about any difference, and the packages it compares are pinned alike.
    pytest.mark.filterwarnings(
        "ignore:Mismatched versions found:distributed.versions.VersionMismatchWarning"
    ),
]

BIN = Path(sys.executable).parent
LOW, HIGH = 1, 2
INTERVAL = 0.5
REQUEST_TIMEOUT = 2
SEED = 20261128
HELD_PER_WORKER = 6
FAULT_TIMEOUT = 60.0
#: Every fault the run injects, in a seeded random order.
PLAN: list[str] = (
    ["worker-sigkill"] * 3
    + ["scaler-sigkill"] * 3
    + ["scheduler-restart"] * 2
    + ["api+scale-down"] * 3
    + ["api+worker-sigkill"] * 9
)
#: The backend's engine calls as (method, path without the API version).
CALLS = {
    "list": ("GET", "/containers/json"),
    "create": ("POST", "/containers/create"),
    "start": ("POST", "/containers/[^/]+/start"),
    "stop": ("POST", "/containers/[^/]+/stop"),
    "delete": ("DELETE", "/containers/[^/]+"),
}
#: Engine failures while a SIGKILLed worker is replaced (list, create, start) and while the
#: scaler retires one (stop, delete): every status at least once, each in a seeded order.
REPLACE_FAULTS: list[tuple[str, int | str]] = [
    ("list", 500),
    ("list", 403),
    ("list", TIMEOUT),
    ("create", 503),
    ("create", 403),
    ("create", TIMEOUT),
    ("start", 409),
    ("start", 500),
    ("start", 503),
]
RETIRE_FAULTS: list[tuple[str, int | str]] = [("stop", 503), ("delete", 409), ("stop", TIMEOUT)]
GONE = frozenset({"exited", "dead", "removing"})


def metrics_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2):
            return True
    except OSError:
        return False


class Rig:
    """The deployment under test and the means to hurt it."""

    def __init__(
        self, tmp_path: Path, processes: list[subprocess.Popen[bytes]], proxy: DockerFaultProxy
    ) -> None:
        self.tmp = tmp_path
        self.processes = processes
        self.proxy = proxy
        self.engine = docker.APIClient(base_url="unix:///var/run/docker.sock", timeout=30)
        self.name = f"faults{time.time_ns() % 10**6}"
        self.port, self.dashboard, self.metrics = free_port(), free_port(), free_port()
        self.logs_dir = tmp_path / "logs"
        self.logs_dir.mkdir()
        self.config = self._rendered_config()
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.scaler: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.target = HIGH
        self.killed: set[str] = set()
        self.client: Client | None = None
        self.held: list[Future] = []
        self.expected: list[int] = []
        self.replace_faults = list(REPLACE_FAULTS)
        self.retire_faults = list(RETIRE_FAULTS)
        self.retired_holding = 0

    def _rendered_config(self) -> dict[str, Any]:
        values = {
            "deployment": self.name,
            "scheduler": {"port": self.port, "dashboard_port": self.dashboard},
            "worker": {
                "threads": 1,
                "memory": "512MiB",
                "cpus": 1,
                "death_timeout": 15,
                "stop_timeout": 5,
                # No handover preload: the faults here are the engine's and SIGKILLs, and a
                # hung stop is timed by the 5 s above (a handover needs at least 10 more).
                "handover_timeout": 0,
                "extra_args": ["--no-nanny"],
            },
            "scaler": {"policy": "fixed", "interval": INTERVAL, "startup_timeout": 60},
        }
        out = self.tmp / "rendered"
        render_over_defaults("docker", values, out)
        config: dict[str, Any] = yaml.safe_load((out / "scaler-config.yaml").read_text())
        config["metrics"] = {"host": "127.0.0.1", "port": self.metrics}
        config["backend"]["options"] |= {
            "base_url": self.proxy.url,
            "request_timeout": REQUEST_TIMEOUT,
        }
        return config

    # -- processes

    def start_scheduler(self) -> None:
        self.scheduler = start(
            [
                str(BIN / "dask"),
                "scheduler",
                *("--preload", str(Path(__file__).with_name("ledger_preload.py"))),
                *("--preload", "dask_deploy.scheduler_preload"),
                *("--host", "127.0.0.1", "--port", str(self.port)),
                *("--dashboard-address", f"127.0.0.1:{self.dashboard}"),
            ],
            self.logs_dir / f"scheduler-{self.restarts}.log",
        )
        self.processes.append(self.scheduler)
        self.client = Client(f"tcp://127.0.0.1:{self.port}", timeout="60s")

    def start_scaler(self, target: int, cleanup: bool = False) -> None:
        self.restarts += 1
        self.target = target
        config = dict(self.config)
        config["policy"] = fixed_policy(target, minimum=target, maximum=target)
        config["loop"] = {**config["loop"], "cleanup_on_exit": cleanup}
        path = self.tmp / f"scaler-{self.restarts}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.scaler = start(
            [str(BIN / "dask-deploy"), "scale", "--config", str(path)],
            self.logs_dir / f"scaler-{self.restarts}.log",
        )
        self.processes.append(self.scaler)

    def kill_scaler(self) -> None:
        assert self.scaler is not None and self.scaler.poll() is None, self.logs()
        self.scaler.kill()
        self.scaler.wait()

    # -- what the engine and the scheduler report

    def containers(self) -> dict[str, str]:
        """name -> state of the deployment's worker containers, straight from the engine."""
        listed = self.engine.containers(
            all=True,
            filters={"label": [f"dask-deploy.deployment={self.name}", "dask-deploy.role=worker"]},
        )
        return {c["Names"][0].lstrip("/"): c["State"] for c in listed}

    def live(self) -> set[str]:
        return {name for name, state in self.containers().items() if state not in GONE}

    def running(self) -> set[str]:
        return {name for name, state in self.containers().items() if state == "running"}

    def worker_names(self) -> dict[str, str]:
        assert self.client is not None
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        return {str(w["name"]): address for address, w in workers.items()}

    def ledger(self) -> dict[str, Any]:
        assert self.client is not None
        return dict(self.client.sync(self.client.scheduler.fault_ledger))

    def logs(self) -> str:
        newest = sorted(self.logs_dir.glob("*.log"), key=lambda path: path.stat().st_mtime)
        parts = [tail(path, 30) for path in newest[-3:]]
        parts.append(f"--- containers: {self.containers()}")
        parts.append(f"--- proxy served: {self.proxy.served[-10:]}")
        return "\n".join(parts)

    def wait(
        self, what: str, condition: Callable[[], bool], timeout: float = FAULT_TIMEOUT
    ) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout} s waiting until {what}\n{self.logs()}"
                )
            time.sleep(0.1)

    def converged(self, ceiling: int) -> bool:
        """Target reached: every live container running, its worker connected, none extra."""
        live = self.live()
        assert len(live) <= ceiling, f"more containers than ever wanted: {sorted(live)}"
        return (
            len(live) == self.target and self.running() == live and set(self.worker_names()) == live
        )

    # -- held results

    def hold_on_every_worker(self) -> None:
        """More held results while a connected worker holds none (one batch per call).

        Not pinned with worker restrictions: a loosely restricted task lost with the last
        worker stays in no-worker when a new one joins (distributed schedules only
        unrestricted or matching tasks then). The scheduler's queue spreads a batch instead.
        """
        assert self.client is not None
        for _ in range(3):
            workers = self.worker_names().values()
            if set(workers) <= self.holders():
                return
            factor, batch = len(self.held), HELD_PER_WORKER * len(workers)
            self.held += self.client.map(operator.mul, range(batch), [factor] * batch, pure=False)
            self.expected += [i * factor for i in range(batch)]
            self.wait_held()

    def holding_names(self) -> set[str]:
        """Names of the connected workers holding at least one held result."""
        holders = self.holders()
        return {name for name, address in self.worker_names().items() if address in holders}

    def holders(self) -> set[str]:
        """Addresses of the workers holding at least one held result."""
        assert self.client is not None
        return {a for addresses in self.client.who_has(self.held).values() for a in addresses}

    def wait_held(self) -> None:
        try:
            wait(self.held, timeout=FAULT_TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"held results not in memory\n{self.logs()}") from None

    def check_held(self) -> None:
        assert self.client is not None
        self.wait_held()
        assert self.client.gather(self.held) == self.expected, "a held result is wrong"


def lost_from(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[str]]:
    """Keys booked against each worker name between two ledger readings."""
    old = before["lost_from"]
    return {
        name: keys[len(old.get(name, [])) :]
        for name, keys in after["lost_from"].items()
        if len(keys) > len(old.get(name, []))
    }


def recomputed(held: list[str], ledger: dict[str, Any]) -> int:
    return sum(max(0, ledger["computed"].get(key, 0) - 1) for key in held)


@pytest.fixture
def proxy() -> Iterator[DockerFaultProxy]:
    with DockerFaultProxy() as running:
        yield running


def test_docker_faults_converge_lose_nothing_retired_and_leave_no_container(
    docker_images: dict[str, str],
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
    proxy: DockerFaultProxy,
) -> None:
    chooser = random.Random(SEED)
    plan = list(PLAN)
    chooser.shuffle(plan)
    rig = Rig(tmp_path, processes, proxy)
    chooser.shuffle(rig.replace_faults)
    chooser.shuffle(rig.retire_faults)
    assert rig.config["backend"]["options"]["image"] == docker_images["worker"]
    try:
        rig.start_scheduler()
        rig.start_scaler(HIGH)
        rig.wait("the first workers connect", lambda: rig.converged(HIGH), 120)
        for number, kind in enumerate(plan):
            print(f"fault {number}: {kind}", flush=True)
            run_fault(rig, kind, chooser)
        print(f"workers retired while holding results: {rig.retired_holding}", flush=True)
        assert not rig.replace_faults and not rig.retire_faults, "an API fault was not injected"
        teardown(rig)
    finally:
        if rig.client is not None:
            rig.client.close()
        if rig.scaler is not None and rig.scaler.poll() is None:
            rig.kill_scaler()  # first, or it would replace what is removed below
        leftovers = list(rig.containers())
        if leftovers:
            subprocess.run(["docker", "rm", "--force", *leftovers], capture_output=True)
        rig.engine.close()


def run_fault(rig: Rig, kind: str, chooser: random.Random) -> None:
    """Inject one fault, wait until it is over, measure the way back; record it."""
    assert rig.client is not None
    # Only this fault's victims: the scaler removes an ended container at once and its name
    # is reused by the replacement, which a later fault may retire (and must not lose).
    rig.killed = set()
    rig.hold_on_every_worker()
    held_keys = [str(f.key) for f in rig.held]
    before = rig.ledger()
    recomputed_before = recomputed(held_keys, before)
    holding, live_before = rig.holding_names(), rig.live()
    ceiling = rig.target
    label = kind
    lost_everything = 0

    def watch_for(target: int) -> BoundsWatch:
        return BoundsWatch(
            target, target, lambda: len(rig.live()), lambda: scaler_ticks(rig.metrics)
        )

    watch = watch_for(rig.target)

    def until(what: str, condition: Callable[[], bool]) -> None:
        rig.wait(what, lambda: (watch.in_bounds(), condition())[1])

    if kind in ("worker-sigkill", "api+worker-sigkill"):
        if kind == "api+worker-sigkill":
            call, status = rig.replace_faults.pop()
            times = 1 if status == TIMEOUT else chooser.randint(1, 3)
            rig.proxy.inject(*CALLS[call], status, times)
            label = f"api-{call}-{status}x{times}+worker-sigkill"
        victim = chooser.choice(sorted(rig.running()))
        rig.killed.add(victim)
        rig.engine.kill(victim)  # SIGKILL: the worker ends without retirement
        until(
            f"{victim} is seen exited and the injected faults are used up",
            lambda: victim not in rig.live() and rig.proxy.pending() == 0,
        )
    elif kind == "scaler-sigkill":
        # A random point of the loop, then again early in the life of the restarted scaler,
        # which has just been told to retire or to launch a worker (the target flips).
        time.sleep(chooser.uniform(0, 2 * INTERVAL))
        rig.kill_scaler()
        flipped = LOW if rig.target == HIGH else HIGH
        ceiling = max(ceiling, flipped)
        rig.start_scaler(flipped)
        rig.wait("the restarted scaler is up", lambda: metrics_up(rig.metrics), 30)
        time.sleep(chooser.uniform(0, 3 * INTERVAL))
        rig.kill_scaler()
        rig.start_scaler(flipped)
        watch = watch_for(flipped)
        label = f"scaler-sigkill+flip-to-{flipped}"
        until("the restarted scaler is up", lambda: metrics_up(rig.metrics))
    elif kind == "api+scale-down":
        if rig.target == LOW:  # scale up first (not a fault), so that there is a worker to retire
            rig.kill_scaler()
            rig.start_scaler(HIGH)
            rig.wait("back to two workers", lambda: rig.converged(HIGH))
            rig.hold_on_every_worker()
            held_keys = [str(f.key) for f in rig.held]
            before = rig.ledger()
            recomputed_before = recomputed(held_keys, before)
            holding, live_before = rig.holding_names(), rig.live()
        call, status = rig.retire_faults.pop()
        rig.proxy.inject(*CALLS[call], status, 1)
        label = f"api-{call}-{status}+scale-down"
        rig.kill_scaler()
        rig.start_scaler(LOW)
        watch = watch_for(LOW)
        until(
            "the restarted scaler is up and the injected fault is used up",
            lambda: metrics_up(rig.metrics) and rig.proxy.pending() == 0,
        )
    elif kind == "scheduler-restart":
        old = rig.live()
        lost_everything = len(rig.held)
        rig.client.close()
        rig.client, rig.held, rig.expected = None, [], []
        assert rig.scheduler is not None
        names_before = set(rig.containers())
        rig.scheduler.kill()
        rig.scheduler.wait()
        # The workers lose their scheduler and end (at once, or by their death timeout); the
        # scaler, which cannot reach the scheduler, must hold instead of replacing them.
        until("the old workers exit", lambda: not rig.live() & old)
        time.sleep(chooser.uniform(1, 3) * INTERVAL)
        launched = set(rig.containers()) - names_before
        assert not launched, f"launched {launched} without a scheduler\n{rig.logs()}"
        rig.start_scheduler()
        until(
            "the old workers have exited or reconnected to the new scheduler",
            lambda: all(n not in rig.live() or n in rig.worker_names() for n in old),
        )
        before = rig.ledger()
        held_keys, recomputed_before = [], 0
    else:
        raise AssertionError(f"unknown fault kind {kind}")

    over = time.monotonic()
    ticks = watch.ticks_to_bounds(FAULT_TIMEOUT, rig.logs)
    until(f"recovery from {label}", lambda: rig.converged(ceiling))
    recovery = time.monotonic() - over
    if kind == "scheduler-restart":
        rig.hold_on_every_worker()  # the results resubmitted: recomputed from scratch
        held_keys = [str(f.key) for f in rig.held]
    rig.check_held()
    if kind != "scheduler-restart":
        retired = (live_before - rig.live() - rig.killed) & holding
        rig.retired_holding += len(retired)
        if kind == "api+scale-down":
            assert retired, f"{label}: no worker holding results was retired\n{rig.logs()}"
    after = rig.ledger()
    lost = lost_from(before, after)
    held_set = set(held_keys)
    from_others = {name: keys for name, keys in lost.items() if name not in rig.killed}
    assert not from_others, f"{label}: results lost from workers not SIGKILLed: {from_others}"
    TALLY.faults.append(
        FaultRecord(
            backend="docker",
            kind=label,
            recovery_seconds=recovery,
            seconds_outside_bounds=watch.seconds_outside,
            keys_lost_from_retired_workers=sum(len(keys) for keys in from_others.values()),
            tasks_recomputed=(
                len(held_keys)  # resubmitted: computed again from scratch
                if kind == "scheduler-restart"
                else recomputed(held_keys, after) - recomputed_before
            ),
            ticks_to_bounds=ticks,
            keys_lost=lost_everything
            + sum(1 for keys in lost.values() for key in keys if key in held_set),
        )
    )


def teardown(rig: Rig) -> None:
    """The product's own teardown: a scaler with cleanup_on_exit, stopped with SIGTERM."""
    assert rig.client is not None
    rig.client.close()
    rig.client, rig.held, rig.expected = None, [], []
    rig.kill_scaler()
    rig.start_scaler(rig.target, cleanup=True)
    rig.wait("the last scaler is up", lambda: metrics_up(rig.metrics))
    assert rig.scaler is not None
    rig.scaler.send_signal(signal.SIGTERM)
    assert rig.scaler.wait(60) == 0, rig.logs()
    left = rig.containers()
    TALLY.instances_left_behind += len(left)
    assert not left, f"containers left behind after teardown: {left}\n{rig.logs()}"
