"""Faults against the Kubernetes stand-in: API errors and timeouts, restarts, scale-down under fire.

The real scheduler (with the fault ledger preloaded), the real ``dask-deploy scale`` with the
rendered configuration and the stand-in API server (dask_deploy.testing.kubernetes), which
validates every request, enforces the rendered Role and runs each pod's ``dask worker``.
The scaler keeps a fixed count: ``LOW`` (2 workers in [2, 3]) or ``HIGH`` (3 in [3, 3]), so
a SIGKILLed pod takes the count out of bounds. The faults, in a shuffled order:

- an API fault (403, 409, 500, 503, a call held past the client's timeout then served, or
  held then dropped, an outage of several ticks) on list or create, with a worker pod
  SIGKILLed at the same time;
- the scaler SIGKILLed at a random point of its loop and restarted with the ``HIGH`` count,
  then again with the ``LOW`` count while delete (or list) calls fail: it retires a pod that
  holds client-held results;
- the scaler SIGKILLed and restarted with the same count;
- the scheduler SIGKILLed and restarted on the same port: its workers exit, held results are
  gone with it (and submitted again); the scaler holds while it is away.

After each fault: ticks from the fault being over (the pod seen gone, every injected failure
served: ``pending_faults()``, the restarted process up) until the live pod count (from the API:
not ended, not being deleted) is back within bounds (``BoundsWatch``), seconds until the target
is met with every worker connected, and the scheduler's fault ledger (read over RPC): held
results were lost only with pods this test SIGKILLed. Each retired pod is deleted, at the latest
by the next scale-up when its own delete failed; no pod name is used twice; the maximum is never
exceeded; the garbage collector leaves no pod once the scheduler pod is gone.
"""

from __future__ import annotations

import operator
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from bounds import BoundsWatch, fixed_policy, scaler_metrics_up, scaler_ticks
from distributed import Client, Future

from dask_deploy.testing.kubernetes import KubernetesStandIn
from kubernetes_support import kubernetes_values, local_worker_pod, render_kubernetes
from process_support import free_port, listening, start, tail
from tally import TALLY, FaultRecord

pytestmark = [pytest.mark.faults, pytest.mark.kubernetes, pytest.mark.integration]

BIN = Path(sys.executable).parent
LEDGER_PRELOAD = Path(__file__).resolve().parent / "ledger_preload.py"
MAXIMUM = 3
INTERVAL = 0.3
#: The backend's request timeout here; a held call is held longer, so the client gives up.
REQUEST_TIMEOUT = 1.0
HOLD = 1.5
#: An outage: this many calls in a row answer 503, over several ticks.
OUTAGE_CALLS = 12
TIMEOUT = 60.0
HELD_RESULTS = 8
HOLD_ATTEMPTS = 5
#: The scaler's RPC connect timeout (dask_deploy.observe): a tick waits this long for a scheduler.
SCHEDULER_CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Count:
    """A fixed count and the bounds it is kept in."""

    minimum: int
    workers: int


LOW, HIGH = Count(minimum=2, workers=2), Count(minimum=3, workers=3)
#: How an API fault looks: an error status, or a call held past the client's timeout.
API_FAULTS: dict[str, dict[str, Any]] = {
    "500": {"status": 500},
    "503": {"status": 503},
    "409": {"status": 409},
    "403": {"status": 403},
    "timeout": {"delay": HOLD},
    "drop": {"delay": HOLD, "drop": True},
}


def wait_until(
    what: str,
    condition: Callable[[], Any],
    logs: Callable[[], str],
    poll: Callable[[], object] | None = None,
) -> None:
    """Wait for ``condition``, calling ``poll`` (a BoundsWatch's in_bounds) meanwhile."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if poll is not None:
            poll()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {TIMEOUT} s waiting until {what}\n{logs()}")
        time.sleep(0.05)


def metric(port: int, name: str) -> float:
    """One sample of the scaler's metrics (0 when it is not served)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except (OSError, urllib.error.URLError):
        return 0.0
    match = re.search(rf"^{name}\s+(\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@dataclass
class Cluster:
    """The scheduler, the scaler and the stand-in, with the client's held results."""

    tmp_path: Path
    api: KubernetesStandIn
    config: dict[str, Any]
    processes: list[subprocess.Popen[bytes]]
    owner_uid: str
    port: int
    count: Count = LOW
    scheduler: subprocess.Popen[bytes] | None = None
    scaler: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0
    generation: int = 0
    client: Client | None = None
    held: dict[str, Future] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    killed: set[str] = field(default_factory=set)
    #: Ended pods a refused delete left behind, for the next scale-up to delete.
    ended: set[str] = field(default_factory=set)
    ledger_seen: dict[str, int] = field(default_factory=dict)
    computed_seen: int = 0

    # -- processes -----------------------------------------------------------------------
    def log(self, name: str) -> Path:
        return self.tmp_path / "logs" / f"{name}.log"

    def logs(self) -> str:
        return "\n".join(
            [
                tail(self.log(f"scheduler-{self.generation}")),
                tail(self.log(f"scaler-{self.metrics_port}"), 40),
                f"--- live pods: {sorted(self.live_pods())}",
            ]
        )

    def start_scheduler(self) -> None:
        self.generation += 1
        self.scheduler = start(
            [
                str(BIN / "dask"),
                "scheduler",
                *("--preload", "dask_deploy.scheduler_preload"),
                *("--preload", str(LEDGER_PRELOAD)),
                *("--host", "127.0.0.1", "--port", str(self.port)),
                *("--dashboard-address", f"127.0.0.1:{free_port()}"),
            ],
            self.log(f"scheduler-{self.generation}"),
        )
        self.processes.append(self.scheduler)

    def start_scaler(self, count: Count) -> None:
        self.count, self.metrics_port = count, free_port()
        config = self.config | {
            "policy": fixed_policy(count.workers, minimum=count.minimum, maximum=MAXIMUM),
            "metrics": {"host": "127.0.0.1", "port": self.metrics_port},
        }
        path = self.tmp_path / f"scaler-{self.metrics_port}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.scaler = start(
            [str(BIN / "dask-deploy"), "scale", "--config", str(path)],
            self.log(f"scaler-{self.metrics_port}"),
            {"DASK_DEPLOY_POD_NAME": "faults-scheduler-0", "DASK_DEPLOY_POD_UID": self.owner_uid},
        )
        self.processes.append(self.scaler)

    @staticmethod
    def sigkill(process: subprocess.Popen[bytes] | None) -> None:
        assert process is not None and process.poll() is None, "it died on its own"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    # -- what the resource manager and the scheduler see ---------------------------------
    def live_pods(self) -> set[str]:
        """Pods the API holds for the deployment: not ended, not being deleted."""
        return {
            name
            for name, pod in self.api.pods().items()
            if pod["status"]["phase"] not in ("Succeeded", "Failed")
            and "deletionTimestamp" not in pod["metadata"]
        }

    def workers(self) -> dict[str, str]:
        """Connected workers: name -> address (asked over RPC: the client may be reconnecting)."""
        assert self.client is not None
        info = self.client.sync(self.client.scheduler.identity)["workers"]
        return {str(w["name"]): address for address, w in info.items()}

    def converged(self) -> bool:
        live = self.live_pods()
        assert len(live) <= MAXIMUM, f"more pods than the maximum: {sorted(live)}"
        return len(live) == self.count.workers and set(self.workers()) == live

    def watch(self, count: Count) -> BoundsWatch:
        return BoundsWatch(
            count.minimum,
            MAXIMUM,
            live_instances=lambda: len(self.live_pods()),
            ticks=lambda: scaler_ticks(self.metrics_port),
        )

    # -- held results ---------------------------------------------------------------------
    def hold(self, count: int) -> None:
        """Submit ``count`` results for the client to hold."""
        self._submit([None] * count)

    def hold_one_on_each_worker(self) -> None:
        """A held result on every connected worker, so whichever is retired holds one.

        The restriction is loose (a result must be recomputed elsewhere when its worker is
        killed), so the scheduler may run one on another worker, e.g. one not running at that
        moment: submit again for any worker left without a result.
        """
        for _ in range(HOLD_ATTEMPTS):
            holders = self.holders()
            missing = [address for name, address in self.workers().items() if name not in holders]
            if not missing:
                return
            self._submit(missing)
        assert self.client is not None
        statuses = {name: self._status(address) for name, address in self.workers().items()}
        who_has = self.client.who_has(list(self.held.values()))
        raise AssertionError(
            f"no held result on some worker after {HOLD_ATTEMPTS} submissions: "
            f"statuses {statuses}, who_has {who_has}\n{self.logs()}"
        )

    def _status(self, address: str) -> str:
        assert self.client is not None
        info = self.client.sync(self.client.scheduler.identity)["workers"]
        return str(info.get(address, {}).get("status", "gone"))

    def _submit(self, addresses: list[str | None]) -> None:
        assert self.client is not None
        for address in addresses:
            number = len(self.expected)
            key = f"held-{self.generation}-{number}"
            self.expected[key] = number
            self.held[key] = self.client.submit(
                operator.add,
                number,
                0,
                key=key,
                workers=[address] if address else None,
                allow_other_workers=bool(address),  # recomputed anywhere if that one dies
            )
        self.check_held()

    def check_held(self) -> None:
        assert self.client is not None
        values = self.client.gather(list(self.held.values()))
        assert values == [self.expected[key] for key in self.held], "a held result is wrong"

    def holders(self) -> set[str]:
        """Names of the workers holding a held result."""
        assert self.client is not None
        names = {address: name for name, address in self.workers().items()}
        who_has = self.client.who_has(list(self.held.values()))
        return {names[a] for addresses in who_has.values() for a in addresses if a in names}

    def ledger(self) -> tuple[dict[str, int], int]:
        """Held results lost per worker name, and recomputations, since the scheduler started."""
        assert self.client is not None
        report = self.client.sync(self.client.scheduler.fault_ledger)
        lost = {name: len(keys) for name, keys in report["lost_from"].items() if keys}
        recomputed = sum(times - 1 for times in report["computed"].values())
        return lost, recomputed


@dataclass
class Outcome:
    """What one fault did, measured from the moment it was over."""

    kind: str
    watch: BoundsWatch
    ticks: int
    over_at: float
    created_before: int
    keys_lost_with_scheduler: int = 0


def run_fault(
    cluster: Cluster,
    kind: str,
    inject: Callable[[], None],
    over: Callable[[], bool],
    count: Count | None = None,
) -> Outcome:
    """Inject, wait until the fault is over, count the ticks until the count is in bounds.

    The bounds are those of ``count``, the count asked for once the fault is injected.
    """
    watch = cluster.watch(count or cluster.count)
    created_before = len(cluster.api.created)
    inject()
    wait_until(f"{kind} is over", over, cluster.logs, watch.in_bounds)
    over_at = time.monotonic()
    ticks = watch.ticks_to_bounds(TIMEOUT, cluster.logs)
    return Outcome(kind, watch, ticks, over_at, created_before)


def record(cluster: Cluster, outcome: Outcome) -> None:
    """Wait for the target with every worker connected; check results and the ledger; tally."""
    wait_until(
        f"the target is met after {outcome.kind}",
        cluster.converged,
        cluster.logs,
        outcome.watch.in_bounds,
    )
    recovery = time.monotonic() - outcome.over_at
    if len(cluster.api.created) > outcome.created_before:
        left = cluster.ended - set(cluster.api.deleted)
        assert not left, f"ended pods still there after a scale-up: {left}\n{cluster.logs()}"
        cluster.ended.clear()
    cluster.check_held()
    lost, recomputed = cluster.ledger()
    new = {name: n - cluster.ledger_seen.get(name, 0) for name, n in lost.items()}
    new = {name: n for name, n in new.items() if n}
    from_others = {name: n for name, n in new.items() if name not in cluster.killed}
    assert not from_others, (
        f"{outcome.kind}: held results lost from workers this test did not SIGKILL: "
        f"{from_others}\n{cluster.logs()}"
    )
    cluster.ledger_seen = lost
    TALLY.faults.append(
        FaultRecord(
            backend="kubernetes",
            kind=outcome.kind,
            recovery_seconds=recovery,
            seconds_outside_bounds=outcome.watch.seconds_outside,
            keys_lost_from_retired_workers=sum(from_others.values()),
            # Results gone with a scheduler are computed again too: submitted anew.
            tasks_recomputed=recomputed - cluster.computed_seen + outcome.keys_lost_with_scheduler,
            ticks_to_bounds=outcome.ticks,
            keys_lost=sum(new.values()) + outcome.keys_lost_with_scheduler,
        )
    )
    cluster.computed_seen = recomputed


def api_fault_with_pod_kill(cluster: Cluster, chooser: random.Random, verb: str, mode: str) -> None:
    victim = chooser.choice(sorted(cluster.live_pods()))
    errors_before = metric(cluster.metrics_port, "dask_deploy_backend_errors_total")

    def inject() -> None:
        # A held call costs a request timeout: once is enough (and a create served late
        # leaves the scaler nothing to create again, so a second one would never be served).
        if mode == "outage":
            cluster.api.inject(verb, 503, times=OUTAGE_CALLS)
        else:
            times = 1 if "delay" in API_FAULTS[mode] else chooser.randint(1, 2)
            cluster.api.inject(verb, times=times, **API_FAULTS[mode])
        cluster.killed.add(victim)
        cluster.api.kill_containers(victim)

    outcome = run_fault(
        cluster,
        f"api-{verb}-{mode}+pod-sigkill",
        inject,
        lambda: victim not in cluster.live_pods() and cluster.api.pending_faults() == 0,
    )
    if (verb, mode) == ("list", "outage"):
        # A call retries for about one interval, then the tick fails and the loop retries,
        # observing afresh: several failed ticks. (A call retrying for 30 s sat on 11 of
        # the 12 failures in one tick, and the count stayed out of bounds for 27 s.)
        failed = metric(cluster.metrics_port, "dask_deploy_backend_errors_total") - errors_before
        assert failed >= 2, f"{failed} failed ticks over {OUTAGE_CALLS} failing lists"
    record(cluster, outcome)


def scaler_restart(cluster: Cluster, chooser: random.Random, count: Count) -> None:
    def inject() -> None:
        time.sleep(chooser.uniform(0, 2 * INTERVAL))  # a random point of the loop
        cluster.sigkill(cluster.scaler)
        cluster.start_scaler(count)

    kind = "scaler-sigkill" + ("" if count == cluster.count else f"+count-{count.workers}")
    over = lambda: scaler_metrics_up(cluster.metrics_port)  # noqa: E731
    record(cluster, run_fault(cluster, kind, inject, over, count))


def scale_down_under_api_fault(
    cluster: Cluster, chooser: random.Random, verb: str, mode: str
) -> None:
    """From HIGH to LOW while ``verb`` fails: a pod holding results is retired, then deleted."""
    assert cluster.count == HIGH
    cluster.hold_one_on_each_worker()
    before, holders = cluster.live_pods(), cluster.holders()
    assert holders == before, f"every worker holds a result: {holders} != {before}"
    deleted = len(cluster.api.deleted)

    def inject() -> None:
        # Once: the retirement's delete is the only one (list: every tick's).
        times = chooser.randint(1, 2) if verb == "list" else 1
        cluster.api.inject(verb, times=times, **API_FAULTS[mode])
        time.sleep(chooser.uniform(0, 2 * INTERVAL))
        cluster.sigkill(cluster.scaler)
        cluster.start_scaler(LOW)

    def over() -> bool:
        return scaler_metrics_up(cluster.metrics_port) and cluster.api.pending_faults() == 0

    outcome = run_fault(cluster, f"scale-down+api-{verb}-{mode}", inject, over, LOW)
    record(cluster, outcome)
    retired = before - cluster.live_pods()
    assert len(retired) == 1 and retired <= holders, f"retired {retired}, held on {holders}"
    (name,) = retired
    if verb == "delete" and mode in ("403", "timeout", "drop"):
        # Refused or unanswered for longer than the call retries: the retired pod has ended
        # (its worker closed) and is only deleted by the next scale-up.
        if name not in cluster.api.deleted[deleted:]:
            assert cluster.api.pods()[name]["status"]["phase"] == "Succeeded"
            cluster.ended.add(name)
    else:
        # The retired worker's pod ends as soon as the scheduler closes it, which meets the
        # count; the scaler's delete follows that retirement (after one retry here).
        wait_until(
            f"the retired pod {name} is deleted",
            lambda: name in cluster.api.deleted[deleted:],
            cluster.logs,
        )
        assert cluster.api.deleted[deleted:] == [name], "not exactly the retired pod deleted"


def scheduler_restart(cluster: Cluster, away: float) -> None:
    """SIGKILL the scheduler, keep it away ``away`` seconds, start it again on its port."""
    lost = len(cluster.held)

    def inject() -> None:
        errors = metric(cluster.metrics_port, "dask_deploy_scheduler_errors_total")
        created = len(cluster.api.created)
        cluster.sigkill(cluster.scheduler)
        wait_until("its workers have exited", lambda: not cluster.live_pods(), cluster.logs)
        time.sleep(away)
        if away > SCHEDULER_CONNECT_TIMEOUT:
            # Away longer than a tick waits to connect: it stays away until the scaler has
            # found so (a failed scheduler call counted), however slow a loaded machine makes
            # that tick, and the scaler held meanwhile.
            wait_until(
                "the scaler counts a failed scheduler call",
                lambda: metric(cluster.metrics_port, "dask_deploy_scheduler_errors_total") > errors,
                cluster.logs,
            )
        assert cluster.api.created[created:] == [], "pods created while the scheduler was away"
        cluster.start_scheduler()

    outcome = run_fault(cluster, "scheduler-restart", inject, lambda: listening(cluster.port))
    outcome.keys_lost_with_scheduler = lost
    # Its held results and its ledger are gone with it; the client's futures were cancelled.
    cluster.ledger_seen, cluster.computed_seen = {}, 0
    cluster.held.clear()
    record(cluster, outcome)
    # The client reconnects by itself; the results are submitted again.
    wait_until(
        "the client is connected again",
        lambda: cluster.client is not None and cluster.client.status == "running",
        cluster.logs,
    )
    cluster.hold(HELD_RESULTS)


def schedule(chooser: random.Random) -> list[Callable[[Cluster], None]]:
    """The faults, in episodes, shuffled: a scale-down follows the restart that raised the count."""
    episodes: list[list[Callable[[Cluster], None]]] = []
    for verb in ("list", "create"):
        for mode in [*API_FAULTS, "outage"]:
            episodes.append([lambda c, v=verb, m=mode: api_fault_with_pod_kill(c, chooser, v, m)])
    for verb, mode in [("delete", m) for m in API_FAULTS] + [("list", "503")]:
        episodes.append(
            [
                lambda c: scaler_restart(c, chooser, HIGH),
                lambda c, v=verb, m=mode: scale_down_under_api_fault(c, chooser, v, m),
            ]
        )
    episodes += [[lambda c: scaler_restart(c, chooser, LOW)] for _ in range(2)]
    episodes += [[lambda c, a=away: scheduler_restart(c, a)] for away in (1.0, 12.0)]
    chooser.shuffle(episodes)
    return [fault for episode in episodes for fault in episode]


def test_api_faults_restarts_and_scale_down_keep_the_count_and_lose_nothing(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    worker = {"threads": 1, "memory": "1Gi", "death_timeout": 20, "extra_args": ["--no-nanny"]}
    scaler = {"maximum": MAXIMUM, "interval": INTERVAL, "metrics_port": None}
    values = kubernetes_values("faults", port, worker=worker, scaler=scaler)
    rendered = render_kubernetes(values, tmp_path / "rendered")
    host_env = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(tmp_path)}
    chooser = random.Random(9)
    (tmp_path / "logs").mkdir()

    with KubernetesStandIn(
        tmp_path / "api",
        allowed=rendered.granted(),
        host_env=host_env,
        entrypoints=rendered.entrypoints(),
    ) as api:
        worker_pod = rendered.worker_pod()
        local_worker_pod(worker_pod, f"tcp://127.0.0.1:{port}")
        (tmp_path / "worker-pod.yaml").write_text(yaml.safe_dump(worker_pod))
        config = rendered.scaler_config()
        config["backend"]["options"] |= {
            "worker_template": str(tmp_path / "worker-pod.yaml"),
            "kubeconfig": str(api.write_kubeconfig(tmp_path / "kubeconfig")),
            "request_timeout": REQUEST_TIMEOUT,
        }
        cluster = Cluster(tmp_path, api, config, processes, api.add_owner(), port)
        cluster.start_scheduler()
        cluster.start_scaler(LOW)
        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:
            cluster.client = client
            wait_until("the target is reached", cluster.converged, cluster.logs)
            cluster.hold(HELD_RESULTS)
            for fault in schedule(chooser):
                fault(cluster)
            assert len(api.created) == len(set(api.created)), "a pod name was reused"
            cluster.held.clear()

        # Teardown: the scheduler pod goes, its workers are garbage-collected.
        assert cluster.scaler is not None
        cluster.scaler.send_signal(signal.SIGTERM)
        cluster.scaler.wait(30)
        api.remove_owner(cluster.owner_uid)
        wait_until("every worker pod is deleted", lambda: not api.pods(), cluster.logs)
        TALLY.instances_left_behind += len(api.pods())
