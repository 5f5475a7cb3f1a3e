"""Faults against the Marathon stand-in: API failures, SIGKILLed tasks, scaler and scheduler.

A real scheduler (with the fault ledger preload), the real ``dask-deploy scale`` configured
from the rendered Marathon templates, and the stand-in (dask_deploy.testing.marathon) running
the rendered worker app's tasks as real ``dask worker`` processes. In a seeded random order:

- API faults (500, 503, 409 with Marathon's deployment-lock body, 403, and timeouts: answers
  delayed past the backend's ``request_timeout``) on the calls a scale-up or a scale-down
  needs, while the target flips between LOW and HIGH (a scaler restarted with the fixed
  policy's other ``workers``), so the scaler retires workers holding results through them;
- a worker task's process group SIGKILLed (Marathon sees the task failed and, the app's
  ``instances`` being unchanged, relaunches it after its launch delay);
- the scaler SIGKILLed after a flip, at its decision to scale, right after the scheduler
  retired a worker (before the task is killed), or at a random moment, and restarted;
- the scheduler SIGKILLed and restarted on the same port: the results it held are gone
  (``keys_lost``) and are submitted again.

After each fault: the ledger (read over RPC) shows held results lost only from workers this
test SIGKILLed; the count of live tasks as the Marathon API reports it is back within
[minimum, maximum] within ``MAX_TICKS_TO_BOUNDS`` scaler ticks of the fault being over (after
a killed task, plus the ticks of Marathon's own launch delay: Marathon, not the scaler, relaunches
it, since the app's ``instances`` did not change); the
deployment converges (``instances`` = target = live tasks, each running task's worker
connected under its task id); no result held by the client is wrong.
"""

from __future__ import annotations

import math
import operator
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from bounds import BoundsWatch, fixed_policy, scaler_metrics_up, scaler_ticks
from distributed import Client, Future

import process_support
from dask_deploy.testing.marathon import MarathonStandIn
from marathon_support import marathon_standin, marathon_values
from process_support import free_port, listening, start, tail
from render_support import render_over_defaults
from tally import MAX_TICKS_TO_BOUNDS, TALLY, FaultRecord

pytestmark = [pytest.mark.faults, pytest.mark.marathon, pytest.mark.integration]

BIN = Path(sys.executable).parent
LEDGER_PRELOAD = Path(__file__).resolve().parent / "ledger_preload.py"
DEPLOYMENT = "faults"
WORKER_APP = f"/{DEPLOYMENT}/worker"
#: The fixed policy's two targets; minimum = target, so one killed worker leaves the bounds.
LOW, HIGH = 2, 3
INTERVAL = 1.0  # the values' default
REQUEST_TIMEOUT = 2.0
STARTUP_TIMEOUT = 15.0
LIVE_STATES = frozenset({"TASK_STAGING", "TASK_STAGED", "TASK_STARTING", "TASK_RUNNING"})
SEED = 20261128
FAULTS = (
    ["worker-sigkill"] * 6
    + ["scaler-sigkill"] * 6
    + ["scheduler-restart"] * 2
    + [f"api-{status}" for status in ("500", "503", "409", "403", "timeout") for _ in range(2)]
)


def bounds(target: int) -> tuple[int, int]:
    return target, target + 1


def polling(watch: BoundsWatch, condition: Callable[[], Any]) -> Callable[[], Any]:
    """``condition``, polling the bounds watch first (time outside counts during the fault)."""

    def check() -> Any:
        watch.in_bounds()
        return condition()

    return check


def wait_for(
    what: str, condition: Callable[[], Any], timeout: float, describe: Callable[[], str]
) -> Any:
    # Polled often: the bounds watch samples time outside [minimum, maximum] on each poll.
    return process_support.wait_for(what, condition, timeout, describe, poll=0.05)


class MarathonFaultRun:
    """The deployment under test and the handles to break it."""

    def __init__(
        self,
        standin: MarathonStandIn,
        tmp_path: Path,
        processes: list[subprocess.Popen[bytes]],
    ) -> None:
        self.standin = standin
        self.processes = processes
        self.port, self.dashboard, self.metrics_port = free_port(), free_port(), free_port()
        self.logs_dir = tmp_path / "logs"
        self.logs_dir.mkdir()
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.scaler: subprocess.Popen[bytes] | None = None
        self.scalers_started = 0
        self.schedulers_started = 0
        self.target = LOW
        out = tmp_path / "rendered"
        scaler = {
            "policy": "fixed",
            "minimum": LOW,
            "maximum": HIGH + 1,
            "interval": INTERVAL,
            "startup_timeout": STARTUP_TIMEOUT,
            "metrics_port": self.metrics_port,
        }
        values = marathon_values(
            DEPLOYMENT,
            standin,
            self.port,
            self.dashboard,
            image={"repository": None},
            scaler=scaler,
        )
        render_over_defaults("marathon", values, out)
        self.worker_app = (out / "worker-app.json").read_bytes()
        rendered = yaml.safe_load((out / "scaler-config.yaml").read_text())
        assert rendered["backend"]["options"]["app_id"] == WORKER_APP
        self.configs: dict[int, Path] = {}
        for target in (0, LOW, HIGH):
            config = dict(rendered)
            minimum, maximum = bounds(target) if target else (0, HIGH + 1)
            config["policy"] = fixed_policy(target, minimum=minimum, maximum=maximum)
            config["metrics"] = {"host": "127.0.0.1", "port": self.metrics_port}
            config["backend"] = {
                **rendered["backend"],
                "options": {**rendered["backend"]["options"], "request_timeout": REQUEST_TIMEOUT},
            }
            self.configs[target] = tmp_path / f"scaler-{target}.yaml"
            self.configs[target].write_text(yaml.safe_dump(config))

    # --- what the resource manager and the scheduler report ---------------------------------

    def tasks(self) -> list[dict[str, Any]]:
        """The worker app's tasks as ``GET /v2/apps/{id}/tasks`` answers (no fault applies)."""
        with self.standin.lock:
            if self.standin.apps.get(WORKER_APP) is None:
                return []
            _, body = self.standin.handle("GET", f"/v2/apps{WORKER_APP}/tasks", {}, {})
        return list(body["tasks"])

    def live(self) -> set[str]:
        return {t["id"] for t in self.tasks() if t["state"] in LIVE_STATES}

    def running(self) -> set[str]:
        return {t["id"] for t in self.tasks() if t["state"] == "TASK_RUNNING"}

    def instances(self) -> int:
        with self.standin.lock:
            app = self.standin.apps.get(WORKER_APP)
            return int(app.definition["instances"]) if app else 0

    def ticks(self) -> int:
        return scaler_ticks(self.metrics_port)

    def relaunch_delay(self) -> float:
        """Seconds Marathon waits before it relaunches the worker app's last failed task."""
        with self.standin.lock:
            app = self.standin.apps.get(WORKER_APP)
            return app.launch_delay if app else 0.0

    def describe(self) -> str:
        scaler_log = self.logs_dir / f"scaler-{self.scalers_started}.log"
        sandboxes = sorted(self.standin.workdir.glob("faults_worker*/stderr"))[-2:]
        return "\n".join(
            [
                f"target {self.target}, instances {self.instances()}, tasks "
                + ", ".join(f"{t['id'][-12:]}:{t['state']}" for t in self.tasks()),
                tail(self.logs_dir / f"scheduler-{self.schedulers_started}.log", 15),
                tail(scaler_log, 40),
                *(tail(path, 10) for path in sandboxes),
            ]
        )

    # --- processes ------------------------------------------------------------------------

    def start_scheduler(self) -> None:
        self.schedulers_started += 1
        log = self.logs_dir / f"scheduler-{self.schedulers_started}.log"
        argv = [
            str(BIN / "dask"),
            "scheduler",
            # Where the rendered workers dial it: the agent's address.
            *("--host", self.standin.agent_host, "--port", str(self.port)),
            *("--dashboard-address", f"{self.standin.agent_host}:{self.dashboard}"),
            *("--preload", "dask_deploy.scheduler_preload"),
            *("--preload", str(LEDGER_PRELOAD)),
        ]
        self.scheduler = start(argv, log)
        self.processes.append(self.scheduler)

        wait_for(
            "the scheduler listens",
            lambda: listening(self.port, self.standin.agent_host),
            60,
            lambda: tail(log),
        )

    def kill_scheduler(self) -> None:
        assert self.scheduler is not None
        os.killpg(self.scheduler.pid, signal.SIGKILL)
        self.scheduler.wait(30)

    def start_scaler(self, target: int) -> None:
        self.target = target
        self.scalers_started += 1
        self.scaler = start(
            [str(BIN / "dask-deploy"), "scale", "--config", str(self.configs[target])],
            self.logs_dir / f"scaler-{self.scalers_started}.log",
        )
        self.processes.append(self.scaler)

    def wait_scaler_up(self) -> None:
        wait_for(
            "the scaler serves its metrics",
            lambda: scaler_metrics_up(self.metrics_port),
            60,
            self.describe,
        )

    def stop_scaler(self, signum: int = signal.SIGTERM) -> None:
        assert self.scaler is not None
        os.killpg(self.scaler.pid, signum)
        self.scaler.wait(30)
        wait_for(
            "the scaler's metrics port is free",
            lambda: not scaler_metrics_up(self.metrics_port),
            10,
            self.describe,
        )

    def scaler_logged(self, *phrases: str) -> bool:
        """Whether the current scaler's log has a line with any of ``phrases``."""
        log = self.logs_dir / f"scaler-{self.scalers_started}.log"
        text = log.read_text(errors="replace") if log.is_file() else ""
        return any(phrase in text for phrase in phrases)

    def kill_task(self, task_id: str) -> None:
        os.killpg(self.standin.launched[task_id], signal.SIGKILL)


class HeldResults:
    """Results the client holds all along, and what the ledger says happened to them."""

    def __init__(self, run: MarathonFaultRun) -> None:
        self.run = run
        self.client = Client(f"tcp://{run.standin.agent_host}:{run.port}", timeout=60)
        self.futures: list[Future] = []
        self.expected: dict[str, int] = {}
        self.counter = 0
        self.booked: dict[str, int] = {}
        self.computed: dict[str, int] = {}

    def add(self, n: int) -> None:
        """Compute ``n`` more results and hold them (keeping the newest 24)."""
        arguments = range(self.counter, self.counter + n)
        self.counter += n
        more = self.client.map(operator.mul, arguments, arguments, pure=False)
        assert self.client.gather(more) == [x * x for x in arguments]
        self.expected.update({str(f.key): x * x for f, x in zip(more, arguments, strict=True)})
        self.futures = (self.futures + more)[-24:]
        held = {str(f.key) for f in self.futures}
        self.expected = {k: v for k, v in self.expected.items() if k in held}

    def check(self) -> None:
        values = self.client.gather(self.futures)
        assert values == [self.expected[str(f.key)] for f in self.futures], "a held result is wrong"

    def worker_names(self) -> set[str]:
        return {w["name"] for w in self.client.scheduler_info(n_workers=-1)["workers"].values()}

    def holders(self) -> set[str]:
        """Names of the workers holding any held result."""
        names = {
            address: worker["name"]
            for address, worker in self.client.scheduler_info(n_workers=-1)["workers"].items()
        }
        who_has = self.client.who_has(self.futures)
        return {names[a] for addresses in who_has.values() for a in addresses if a in names}

    def losses(self) -> tuple[dict[str, list[str]], int]:
        """Held results lost since the last call, by worker name; tasks recomputed since."""
        report = self.client.sync(self.client.scheduler.fault_ledger)
        lost: dict[str, list[str]] = {}
        for name, keys in report["lost_from"].items():
            new = keys[self.booked.get(name, 0) :]
            self.booked[name] = len(keys)
            held = [k for k in new if k in self.expected]
            if held:
                lost[name] = held
        recomputed = 0
        for key, times in report["computed"].items():
            if key in self.expected:
                recomputed += times - self.computed.get(key, 1)  # the first time is no repeat
                self.computed[key] = times
        return lost, recomputed

    def scheduler_lost(self) -> int:
        """The scheduler died: its results are gone; close the client before a new scheduler
        is up (so its reconnection attempt cannot leave a half-open connection behind)."""
        lost = len(self.futures)
        self.futures.clear()
        self.client.close(timeout=10)
        return lost

    def reconnect(self) -> None:
        """A client for the restarted scheduler (with a fresh ledger)."""
        self.client = Client(f"tcp://{self.run.standin.agent_host}:{self.run.port}", timeout=60)
        self.booked, self.computed = {}, {}


def test_marathon_faults_keep_the_count_lose_nothing_retired_and_leave_no_task(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    chooser = random.Random(SEED)
    faults = list(FAULTS)
    chooser.shuffle(faults)
    with marathon_standin(workdir=tmp_path / "sandboxes") as standin:
        run = MarathonFaultRun(standin, tmp_path, processes)
        run.start_scheduler()
        answer = requests.post(
            f"{standin.url}/v2/apps",
            data=run.worker_app,
            headers={"Content-Type": "application/json"},
            timeout=5,
        )
        assert answer.status_code == 201, answer.text
        run.start_scaler(LOW)
        held = HeldResults(run)
        killed: set[str] = set()
        retired_holding = 0

        def converged() -> bool:
            live, running = run.live(), run.running()
            maximum = bounds(run.target)[1]
            assert len(live) <= maximum, f"above the maximum {maximum}: {sorted(live)}"
            return (
                run.instances() == run.target
                and live == running
                and len(running) == run.target
                and held.worker_names() == running
            )

        wait_for("the first workers connect", converged, 120, run.describe)
        held.add(12)
        for number, kind in enumerate(faults):
            injected = time.monotonic()
            before = run.live()
            holders = held.holders()
            keys_lost_with_scheduler = 0
            kind_detail = ""
            resubmitted = 0
            if kind == "worker-sigkill":
                victim = chooser.choice(sorted(run.running()))
                watch = BoundsWatch(*bounds(run.target), lambda: len(run.live()), run.ticks)
                run.kill_task(victim)
                killed.add(victim)
                wait_for(
                    f"Marathon sees {victim} gone",
                    polling(watch, lambda victim=victim: victim not in run.live()),
                    30,
                    run.describe,
                )
            elif kind == "scaler-sigkill":
                flipped = HIGH if run.target == LOW else LOW
                run.stop_scaler()
                watch = BoundsWatch(*bounds(flipped), lambda: len(run.live()), run.ticks)
                run.start_scaler(flipped)
                point = chooser.choice(["decision", "retired", "random"])
                if point == "retired" and flipped > LOW:
                    point = "decision"  # a scale-up retires nobody
                if point == "random":  # observing, deciding, retiring, killing or holding
                    run.wait_scaler_up()
                    time.sleep(chooser.uniform(0, 2 * INTERVAL))
                else:
                    phrases = ("retired ",) if point == "retired" else ("scale up", "scale down")
                    wait_for(
                        f"the scaler logs its {point}",
                        lambda phrases=phrases: run.scaler_logged(*phrases),
                        60,
                        run.describe,
                    )
                run.stop_scaler(signal.SIGKILL)
                kind_detail = f" at {point}"
                watch.in_bounds()
                run.start_scaler(flipped)
                wait_for(
                    "the restarted scaler is up",
                    polling(watch, lambda: scaler_metrics_up(run.metrics_port)),
                    60,
                    run.describe,
                )
            elif kind == "scheduler-restart":
                watch = BoundsWatch(*bounds(run.target), lambda: len(run.live()), run.ticks)
                run.kill_scheduler()
                keys_lost_with_scheduler = held.scheduler_lost()
                watch.in_bounds()
                time.sleep(chooser.uniform(0, 2 * INTERVAL))  # the scaler meets no scheduler
                run.start_scheduler()
                held.reconnect()
            else:
                status = kind.removeprefix("api-")
                flipped = HIGH if run.target == LOW else LOW
                if flipped > run.target:
                    calls = [("PUT", "/v2/apps"), ("GET", "/v2/apps")]
                else:
                    calls = [("POST", "/v2/tasks/delete"), ("GET", "/v2/apps")]
                method, path = chooser.choice(calls[:1] if status == "409" else calls)
                run.stop_scaler()
                if status == "timeout":
                    standin.inject(
                        None,
                        delay=REQUEST_TIMEOUT + 1,
                        times=chooser.randint(1, 2),
                        method=method,
                        path=path,
                    )
                else:
                    standin.inject(
                        int(status), times=chooser.randint(1, 3), method=method, path=path
                    )
                watch = BoundsWatch(*bounds(flipped), lambda: len(run.live()), run.ticks)
                run.start_scaler(flipped)
                wait_for(
                    f"the stand-in's injected {status} on {method} {path} is spent",
                    polling(watch, standin.faults_over),
                    90,
                    run.describe,
                )
            over = time.monotonic()
            limit = MAX_TICKS_TO_BOUNDS
            if kind == "worker-sigkill":
                limit += math.ceil(run.relaunch_delay() / INTERVAL)
            ticks = watch.ticks_to_bounds(60, run.describe, limit)
            timeout = 60 + (STARTUP_TIMEOUT if kind == "scheduler-restart" else 0)
            wait_for(f"recovery from {kind}", polling(watch, converged), timeout, run.describe)
            recovery = time.monotonic() - over
            if kind == "scheduler-restart":
                held.add(keys_lost_with_scheduler)  # submitted again
                resubmitted = keys_lost_with_scheduler
            held.check()
            lost, recomputed = held.losses()
            from_killed = sum(len(keys) for name, keys in lost.items() if name in killed)
            from_others = {name: keys for name, keys in lost.items() if name not in killed}
            if kind != "scheduler-restart":  # those workers' results went with the scheduler
                retired_holding += len((before - run.live() - killed) & holders)
            TALLY.faults.append(
                FaultRecord(
                    backend="marathon",
                    kind=kind,
                    recovery_seconds=recovery,
                    seconds_outside_bounds=watch.seconds_outside,
                    keys_lost_from_retired_workers=sum(len(k) for k in from_others.values()),
                    tasks_recomputed=recomputed + resubmitted,
                    ticks_to_bounds=ticks,
                    keys_lost=from_killed + keys_lost_with_scheduler,
                )
            )
            print(
                f"fault {number:2d} {kind + kind_detail:27s} ticks {ticks} "
                f"recovery {recovery:5.1f}s "
                f"outside {watch.seconds_outside:4.1f}s "
                f"lost {from_killed + keys_lost_with_scheduler} "
                f"recomputed {recomputed + resubmitted} since start "
                f"{time.monotonic() - injected:5.1f}s",
                flush=True,
            )
            assert not from_others, (
                f"fault {number} ({kind}): held results lost from workers this test did not "
                f"SIGKILL: {from_others}\n{run.describe()}"
            )
            held.add(4)

        assert retired_holding > 0, "no scale-down retired a worker holding results"
        launched = [t for t in standin.launched if t.startswith("faults_worker.")]
        assert len(launched) == len(set(launched)), "a task id was reused"

        # Teardown by the product's own means: release the results, scale to 0, delete the app.
        held.futures.clear()
        wait_for(
            "the scheduler holds no result",
            lambda: not any(held.client.has_what().values()),
            30,
            run.describe,
        )
        held.client.close()
        run.stop_scaler()
        run.start_scaler(0)
        wait_for(
            "every worker task is retired and killed",
            lambda: not run.live() and run.instances() == 0,
            60,
            run.describe,
        )
        run.stop_scaler()
        answer = requests.delete(f"{standin.url}/v2/apps{WORKER_APP}", timeout=5)
        assert answer.status_code == 200, answer.text
        wait_for("every task process is gone", lambda: not standin.pids(), 60, run.describe)
        left = len(run.live()) + len(standin.pids())
        TALLY.instances_left_behind += left
        assert left == 0
