"""A Marathon stand-in: the v2 REST API on 127.0.0.1, running each task as a local process.

Try the rendered Marathon files without a Marathon::

    python -m dask_deploy.testing.marathon --port 8080 &
    curl -X POST -H 'Content-Type: application/json' localhost:8080/v2/apps -d @scheduler-app.json

or from Python (tests)::

    with MarathonStandIn() as marathon:
        MarathonClient(marathon.url).list_tasks()

What it implements: ``/ping``, ``/v2/info``; apps (``GET``/``POST /v2/apps``, ``GET``/``PUT``/
``PATCH``/``DELETE /v2/apps/{id}``, ``/v2/apps/{id}/tasks`` with kill and ``scale``); tasks
(``GET /v2/tasks``, ``POST /v2/tasks/delete``); deployments (``GET``/``DELETE``; each finishes
after ``deployment_seconds`` and locks its apps like Marathon's, answering 409 unless
``force=true``); groups (``GET``/``DELETE /v2/groups/{id}``); the launch queue
(``GET /v2/queue``). Every request body is validated against Marathon's API definition (the
JSON Schemas shipped in ``marathon_schemas/`` or ``$DASK_DEPLOY_MARATHON_SCHEMAS``) and rejected
with Marathon's 422 body.

Tasks run ``bash -c <cmd>`` (or ``args`` exec'd) in their own process group with Marathon's
environment: ``MESOS_TASK_ID``, ``MARATHON_APP_ID``, ``MARATHON_APP_VERSION``,
``MARATHON_APP_RESOURCE_*``, ``MARATHON_APP_LABEL_*``, ``HOST`` (the agent's address,
:data:`AGENT_HOST`, not the loopback), ``PORT0..N``,
``PORT_<NAME>``, ``PORTS``, ``MESOS_SANDBOX`` and the app's ``env``. Killing sends SIGTERM to the
group, then SIGKILL after ``taskKillGracePeriodSeconds``. Tasks below ``instances`` are restarted
(with Marathon's launch backoff: ``backoffSeconds`` times ``backoffFactor`` per failure in a
row, forgotten once overdue by Marathon's cleanup period or on a configuration change, not on
a scale change); excess tasks are killed youngest first.

Volumes: a container's host-path volumes (``hostPath`` + ``containerPath``) map the container
path onto the agent folder, ``agent_root``/hostPath (or hostPath itself without ``agent_root``):
the path is rewritten in the task's ``cmd``, ``args`` and ``env`` values, since the task runs on
the host without a mount namespace (``mode`` is not enforced); a relative container path is a
link in the sandbox.

Ports, as a Mesos agent offers them: only ``port_range`` (the agent default, 31000-32000). Port 0
gets a free port from it; a fixed port with ``requirePorts`` outside it (or taken) is never
offered, so the app waits with no task, as on Mesos (:meth:`MarathonStandIn.waiting` says why).

Health checks, as Mesos and Marathon run them: ``MESOS_HTTP``/``MESOS_TCP`` go to the task's
loopback, 127.0.0.1, at the checked port (host networking); ``HTTP``/``TCP`` (Marathon's) to the
task's host; ``COMMAND`` runs in the task's sandbox with its environment. The first check comes
``delaySeconds`` after launch, then every ``intervalSeconds``; failures within
``gracePeriodSeconds`` (before the first success) are ignored; ``maxConsecutiveFailures`` in a
row kill the task (Marathon then launches a replacement).

The launch queue, ``GET /v2/queue``: each app with instances left to launch, with Marathon's
``processedOffersSummary`` (offers processed and unused; per matching step, in Marathon's order,
the offers that reached it and those declined there: ``rejectSummaryLastOffers`` for the last
offer of the one agent, ``rejectSummaryLaunchAttempt`` since the launch attempt began). Offers
are declined for ``InsufficientPorts`` (above) and, with ``agent_resources`` (cpus, mem, disk,
gpus of the one agent), for ``InsufficientCpus``/``Memory``/``Disk``/``Gpus``.

Limitations: a Docker/Mesos container is NOT started; its command runs directly on the host, so
the host needs the software the image would have. The app's ``user`` is not switched to. No
constraints; resources are accounted only with ``agent_resources``; env secrets are not
resolved.

Faults for tests: :meth:`MarathonStandIn.inject` or ``POST /__standin__/faults`` with
``{"status": 409|500|503, "delay": seconds, "times": n, "method": "PUT", "path": "/v2/apps"}``
(Marathon's own bodies: a 409 is the deployment lock, a 403 "Not Authorized"); a ``delay`` with
no ``status`` answers normally after the delay, a hung server for a client with a shorter
timeout. :meth:`MarathonStandIn.faults_over` says when every injected fault has been answered.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ._groups import poll_group, signal_group
from ._mounts import map_mounts

log = logging.getLogger(__name__)

SCHEMAS_ENV = "DASK_DEPLOY_MARATHON_SCHEMAS"
#: The ports a Mesos agent offers unless started with ``--resources=ports:[...]``.
DEFAULT_PORT_RANGE = (31000, 32000)
#: The agent's address as its tasks see it in ``$HOST``: an address of the machine, but not the
#: loopback 127.0.0.1 where Mesos sends MESOS_HTTP and MESOS_TCP checks.
AGENT_HOST = "127.0.0.2"
_ACTIVE = frozenset({"TASK_STAGING", "TASK_RUNNING"})
_PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER")
#: Marathon's RateLimiterActor forgets overdue launch delays every 10 s: a task failing later
#: than that after the last delay ended starts again at ``backoffSeconds``.
DELAY_CLEANUP_SECONDS = 10.0
#: The steps Marathon matches an offer through, in its order (``NoOfferMatchReason``); the launch
#: queue counts, per step, the offers that reached it and those declined there.
OFFER_STEPS = (
    "UnfulfilledRole",
    "UnfulfilledConstraint",
    "NoCorrespondingReservationFound",
    "AgentMaintenance",
    "InsufficientCpus",
    "InsufficientMemory",
    "InsufficientDisk",
    "InsufficientGpus",
    "InsufficientPorts",
    "DeclinedScarceResources",
)


#: Marathon's API definition as JSON Schemas, shipped inside this package (see README.md there
#: for provenance: derived from Marathon's RAML at commit 90619da70d79, Apache-2.0).
SCHEMAS = Path(__file__).resolve().parent / "marathon_schemas"


def find_schemas() -> Path:
    """The folder of Marathon's JSON Schemas: ``$DASK_DEPLOY_MARATHON_SCHEMAS`` when set (to
    validate against another Marathon release), else the copy shipped in this package."""
    override = os.environ.get(SCHEMAS_ENV)
    return Path(override) if override else SCHEMAS


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[-1].lower() == "true"  # the client sends "True"


def normalize_id(app_id: str) -> str:
    return "/" + "/".join(part for part in app_id.split("/") if part)


class HttpError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("message"))
        self.status = status
        self.body = body


def not_valid(details: list[dict[str, Any]]) -> HttpError:
    return HttpError(422, {"message": "Object is not valid", "details": details})


class Validator:
    """Marathon's request validation: the API definition's schemas, and the rules only in prose."""

    def __init__(self, folder: Path) -> None:
        if not (folder / "App.schema.json").is_file():
            raise FileNotFoundError(f"no Marathon JSON Schemas in {folder} (check {SCHEMAS_ENV})")
        self.folder = folder

    def check(self, schema: str, body: Any) -> None:
        details: dict[str, list[str]] = {}
        import jsonschema

        document = json.loads((self.folder / f"{schema}.schema.json").read_text())
        for error in jsonschema.Draft7Validator(document).iter_errors(body):
            path = "/" + "/".join(str(part) for part in error.absolute_path)
            details.setdefault(path, []).append(error.message)
        if schema == "App" and isinstance(body, dict):
            has_cmd, has_args = body.get("cmd") is not None, body.get("args") is not None
            if (has_cmd and has_args) or not (has_cmd or has_args or body.get("container")):
                details.setdefault("/", []).append(
                    "AppDefinition must either contain one of 'cmd' or 'args', "
                    "and/or a 'container'."
                )
        if details:
            raise not_valid([{"path": p, "errors": e} for p, e in sorted(details.items())])


@dataclass
class Task:
    id: str
    app_id: str
    ports: list[int]
    sandbox: Path
    process: subprocess.Popen[bytes] | None = None
    state: str = "TASK_STAGING"
    staged_at: str = field(default_factory=_now)
    started_at: str | None = None
    kill_deadline: float | None = None
    version: str = ""
    host: str = AGENT_HOST
    env: dict[str, str] = field(default_factory=dict)
    #: One result per health check: None until checked, then whether the last one passed.
    health: list[bool | None] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "appId": self.app_id,
            "host": self.host,
            "ports": self.ports,
            "servicePorts": [],
            "slaveId": "standin-agent-0",
            "state": self.state,
            "stagedAt": self.staged_at,
            "version": self.version,
            "ipAddresses": [{"ipAddress": self.host, "protocol": "IPv4"}],
            "localVolumes": [],
            "role": "*",
        }
        if self.started_at:
            body["startedAt"] = self.started_at
        if any(result is not None for result in self.health):
            body["healthCheckResults"] = [
                {"alive": bool(alive), "consecutiveFailures": failures, "taskId": self.id}
                for alive, failures in zip(self.health, self.failures, strict=True)
            ]
        return body


@dataclass
class App:
    definition: dict[str, Any]
    version: str = field(default_factory=_now)
    tasks: dict[str, Task] = field(default_factory=dict)
    failures: int = 0
    launch_after: float = 0.0
    #: Seconds the last failure delayed the next launch by (the backoff then in force).
    launch_delay: float = 0.0
    #: Why no task can be launched (no matching port offer), or "".
    waiting: str = ""
    #: The launch queue's offer statistics since the current launch attempt began.
    queued_since: str = field(default_factory=_now)
    offers_processed: int = 0
    offers_unused: int = 0
    last_unused_offer_at: str | None = None
    last_used_offer_at: str | None = None
    #: Reason -> offers declined there in this launch attempt, and the last offer's reason.
    declined: dict[str, int] = field(default_factory=dict)
    last_declined: str | None = None

    @property
    def id(self) -> str:
        return str(self.definition["id"])

    def active(self) -> list[Task]:
        return [t for t in self.tasks.values() if t.state in _ACTIVE]


@dataclass
class Deployment:
    id: str
    apps: list[str]
    finishes_at: float
    version: str = field(default_factory=_now)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "affectedApps": self.apps,
            "affectedPods": [],
            "steps": [],
            "currentActions": [{"action": "ScaleApplication", "app": a} for a in self.apps],
            "currentStep": 1,
            "totalSteps": 1,
        }


@dataclass
class Fault:
    status: int | None = None
    delay: float = 0.0
    times: int = 1
    method: str | None = None
    path: str = "/v2/"


def app_defaults(definition: dict[str, Any]) -> dict[str, Any]:
    """An app as Marathon stores it: the posted fields plus Marathon's defaults."""
    app = {
        "instances": 1,
        "cpus": 1.0,
        "mem": 128.0,
        "disk": 0.0,
        "gpus": 0,
        "env": {},
        "labels": {},
        "backoffSeconds": 1,
        "backoffFactor": 1.15,
        "maxLaunchDelaySeconds": 300,
        "taskKillGracePeriodSeconds": 3,
        "requirePorts": False,
        "killSelection": "YOUNGEST_FIRST",
        "healthChecks": [],
        "portDefinitions": [{"port": 0, "protocol": "tcp"}],
        **definition,
    }
    app["id"] = normalize_id(str(definition["id"]))
    return app


class MarathonStandIn:
    """The stand-in server; a context manager that kills every task it started on exit."""

    def __init__(
        self,
        port: int = 0,
        *,
        schemas: Path | None = None,
        workdir: Path | None = None,
        deployment_seconds: float = 0.3,
        tick: float = 0.1,
        agent_root: Path | None = None,
        port_range: tuple[int, int] = DEFAULT_PORT_RANGE,
        agent_host: str = AGENT_HOST,
        agent_resources: dict[str, float] | None = None,
    ) -> None:
        self.agent_root = agent_root
        #: The agent's cpus/mem/disk/gpus; None: no accounting (every task fits).
        self.agent_resources = agent_resources
        self.port_range = port_range
        self.agent_host = agent_host
        #: Tasks killed for failing their health checks.
        self.unhealthy_kills: list[str] = []
        self.validator = Validator(schemas if schemas is not None else find_schemas())
        self.deployment_seconds = deployment_seconds
        self.tick = tick
        self.apps: dict[str, App] = {}
        self.deployments: dict[str, Deployment] = {}
        self.faults: list[Fault] = []
        self._faults_in_flight = 0
        #: Every task ever launched (task id -> process group id) and how each one ended.
        self.launched: dict[str, int] = {}
        self.ended: dict[str, str] = {}
        #: App id -> the most tasks it ever had staging or running at once.
        self.peak_active: dict[str, int] = {}
        #: Tasks of deleted apps, still being killed.
        self.dying: list[Task] = []
        self.lock = threading.RLock()
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="marathon-standin-")
        self.workdir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self._stop = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.server.daemon_threads = True
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> MarathonStandIn:
        for target in (self.server.serve_forever, self._reconcile_forever):
            thread = threading.Thread(target=target, daemon=True, name=f"standin-{target.__name__}")
            thread.start()
            self._threads.append(thread)
        log.info("Marathon stand-in on %s, sandboxes in %s", self.url, self.workdir)
        return self

    def stop(self) -> None:
        """Stop serving and kill every task (SIGTERM, then SIGKILL after its grace period)."""
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            tasks = [t for app in self.apps.values() for t in app.tasks.values()] + self.dying
            for task in tasks:
                self._kill(task, grace=self._grace(task))
        deadline = time.monotonic() + max([self._grace(t) for t in tasks] + [0]) + 2
        while time.monotonic() < deadline and any(_alive(t) for t in tasks):
            self._escalate(tasks)
            time.sleep(0.05)
        for task in tasks:
            _signal(task, signal.SIGKILL)
            if task.process is not None:
                task.process.wait()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> MarathonStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def inject(self, status: int | None = None, *, delay: float = 0.0, times: int = 1,
               method: str | None = None, path: str = "/v2/") -> None:  # fmt: skip
        """Answer the next ``times`` matching requests with ``status`` after ``delay`` seconds."""
        with self.lock:
            self.faults.append(Fault(status, delay, times, method, path))

    def faults_over(self) -> bool:
        """True once every injected fault has been spent and its (delayed) answer sent."""
        with self.lock:
            return not self.faults and not self._faults_in_flight

    def _fault_answered(self) -> None:
        with self.lock:
            self._faults_in_flight -= 1

    def waiting(self, app_id: str) -> str:
        """Why the app has no task launched ("" if nothing holds it back)."""
        with self.lock:
            app = self.apps.get(normalize_id(app_id))
            return app.waiting if app else ""

    def pids(self) -> list[int]:
        """Process group ids of every task still running (for leak checks)."""
        with self.lock:
            tasks = [t for a in self.apps.values() for t in a.tasks.values()] + self.dying
            return [t.process.pid for t in tasks if t.process is not None and _alive(t)]

    # --- the scheduler: launch, observe, kill -------------------------------------------------

    def _reconcile_forever(self) -> None:
        while not self._stop.wait(self.tick):
            try:
                with self.lock:
                    self._reconcile()
            except Exception:  # keep scheduling; a test sees the log
                log.exception("stand-in reconcile failed")

    def _reconcile(self) -> None:
        now = time.monotonic()
        for deployment_id in [d.id for d in self.deployments.values() if d.finishes_at <= now]:
            del self.deployments[deployment_id]
        self._escalate(self.dying)
        for task in [t for t in self.dying if not _alive(t)]:  # the container went with it
            self.dying.remove(task)
            self.ended[task.id] = "TASK_KILLED"
            log.info("task %s TASK_KILLED (app deleted)", task.id)
        for app in self.apps.values():
            for task in list(app.tasks.values()):
                self._observe(app, task)
            active = app.active()
            wanted = int(app.definition["instances"])
            if len(active) > wanted:
                youngest = app.definition["killSelection"] == "YOUNGEST_FIRST"
                ordered = sorted(active, key=lambda t: t.staged_at, reverse=youngest)
                for task in ordered[: len(active) - wanted]:
                    self._kill(task, grace=self._grace(task))
            elif len(active) < wanted and now >= app.launch_after:
                for _ in range(wanted - len(active)):
                    self._launch(app)
            if len(app.active()) >= wanted:
                # Every instance launched: a launch attempt starts when one is missing again.
                app.offers_processed = app.offers_unused = 0
                app.declined, app.last_declined = {}, None
                app.queued_since = _now()
            self._escalate(list(app.tasks.values()))

    def _observe(self, app: App, task: Task) -> None:
        # A main process that ended takes the rest of the task with it, as Mesos destroys the
        # task's container, whatever is left in it.
        code = poll_group(task.process) if task.process is not None else 1
        if code is None:
            if task.state == "TASK_STAGING":
                task.state, task.started_at = "TASK_RUNNING", _now()
            return
        if task.state == "TASK_KILLING":
            task.state = "TASK_KILLED"
        else:
            task.state = "TASK_FINISHED" if code == 0 else "TASK_FAILED"
            if app.failures and time.monotonic() > app.launch_after + DELAY_CLEANUP_SECONDS:
                app.failures = 0  # the last delay is overdue: Marathon has forgotten it
            app.failures += 1
            backoff = float(app.definition["backoffSeconds"]) * float(
                app.definition["backoffFactor"]
            ) ** (app.failures - 1)
            app.launch_delay = min(backoff, float(app.definition["maxLaunchDelaySeconds"]))
            app.launch_after = time.monotonic() + app.launch_delay
        log.info("task %s %s (exit %s)", task.id, task.state, code)
        self.ended[task.id] = task.state
        del app.tasks[task.id]  # Marathon lists only live tasks

    def _launch(self, app: App) -> None:
        definition = app.definition
        task_id = f"{app.id.strip('/').replace('/', '_')}.instance-{uuid.uuid4()}._app.1"
        port_definitions = definition.get("portDefinitions") or []
        short = self._short_of(definition)
        ports = (
            None
            if short
            else self._offered_ports(port_definitions, bool(definition["requirePorts"]))
        )
        if short or ports is None:
            wanted = [p.get("port", 0) for p in port_definitions]
            waiting = short or (
                f"no offer has the ports {wanted} (requirePorts): this agent offers "
                f"{self.port_range[0]}-{self.port_range[1]}"
            )
            self._offer_declined(app, short.split(":")[0] if short else "InsufficientPorts")
            if app.waiting != waiting:
                log.warning("app %s waits: %s", app.id, waiting)
            app.waiting = waiting
            return
        app.waiting = ""
        app.offers_processed += 1
        app.last_used_offer_at = _now()
        sandbox = self.workdir / task_id
        sandbox.mkdir(parents=True)
        env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
        for key, value in definition["env"].items():
            if isinstance(value, str):
                env[key] = value
            else:
                log.warning(
                    "task %s: env %s is a secret reference, not resolved here", task_id, key
                )
        env.update(
            MESOS_TASK_ID=task_id,
            MESOS_SANDBOX=str(sandbox),
            MARATHON_APP_ID=app.id,
            MARATHON_APP_VERSION=app.version,
            MARATHON_APP_RESOURCE_CPUS=str(definition["cpus"]),
            MARATHON_APP_RESOURCE_MEM=str(definition["mem"]),
            MARATHON_APP_RESOURCE_DISK=str(definition["disk"]),
            MARATHON_APP_RESOURCE_GPUS=str(definition["gpus"]),
            MARATHON_APP_LABELS=" ".join(definition["labels"]),
            HOST=self.agent_host,
            PORTS=",".join(map(str, ports)),
        )
        for key, value in definition["labels"].items():
            env[f"MARATHON_APP_LABEL_{re.sub('[^A-Za-z0-9_]', '_', key).upper()}"] = value
        for index, (port, spec) in enumerate(zip(ports, port_definitions, strict=True)):
            env[f"PORT{index}"] = str(port)
            if spec.get("port"):
                env[f"PORT_{spec['port']}"] = str(port)
            if spec.get("name"):
                env[f"PORT_{re.sub('[^A-Za-z0-9_]', '_', spec['name']).upper()}"] = str(port)
        if ports:
            env["PORT"] = str(ports[0])
        mounts = self._mounts(definition, sandbox)
        env = {key: map_mounts(value, mounts) for key, value in env.items()}
        if definition.get("cmd"):
            argv = ["bash", "-c", map_mounts(str(definition["cmd"]), mounts)]
        else:
            argv = [map_mounts(str(a), mounts) for a in definition.get("args") or ["true"]]
        if definition.get("container"):
            log.warning("task %s: container not started; its command runs on the host", task_id)
        with open(sandbox / "stdout", "wb") as out, open(sandbox / "stderr", "wb") as err:
            process = subprocess.Popen(
                argv, cwd=sandbox, env=env, stdout=out, stderr=err, start_new_session=True
            )
        task = Task(task_id, app.id, ports, sandbox, process, version=app.version)
        task.host, task.env = self.agent_host, env
        checks = definition.get("healthChecks") or []
        task.health, task.failures = [None] * len(checks), [0] * len(checks)
        app.tasks[task_id] = task
        self.launched[task_id] = process.pid
        self.peak_active[app.id] = max(self.peak_active.get(app.id, 0), len(app.active()))
        log.info("task %s staged: %s", task_id, shlex.join(argv))
        for index, check in enumerate(checks):
            threading.Thread(
                target=self._check_health, args=(task, index, check), daemon=True
            ).start()

    def _short_of(self, definition: dict[str, Any]) -> str:
        """``InsufficientCpus: ...`` when the agent's free resources cannot hold one more task
        of ``definition`` (with ``agent_resources``); "" when it fits."""
        if self.agent_resources is None:
            return ""
        steps = (("cpus", "InsufficientCpus"), ("mem", "InsufficientMemory"),
                 ("disk", "InsufficientDisk"), ("gpus", "InsufficientGpus"))  # fmt: skip
        for resource, reason in steps:
            total = float(self.agent_resources.get(resource, 0.0))
            used = sum(
                float(a.definition.get(resource) or 0.0) * len(a.active())
                for a in self.apps.values()
            )
            wanted = float(definition.get(resource) or 0.0)
            if wanted and used + wanted > total:
                return f"{reason}: {wanted:g} {resource} wanted, {total - used:g} free"
        return ""

    def _offer_declined(self, app: App, reason: str) -> None:
        """Count one offer of this agent processed for ``app`` and declined at ``reason``."""
        app.offers_processed += 1
        app.offers_unused += 1
        app.last_unused_offer_at = _now()
        app.declined[reason] = app.declined.get(reason, 0) + 1
        app.last_declined = reason

    def queue_json(self) -> dict[str, Any]:
        """``GET /v2/queue``: every app with instances left to launch, and why offers were
        declined (Marathon's ``processedOffersSummary``, one agent here)."""
        queue = []
        now = time.monotonic()
        for app in self.apps.values():
            count = int(app.definition["instances"]) - len(app.active())
            if count <= 0:
                continue
            last = OFFER_STEPS.index(app.last_declined) if app.last_declined else -1
            reached = (
                OFFER_STEPS.index(min(app.declined, key=OFFER_STEPS.index))
                if app.declined
                else len(OFFER_STEPS)
            )
            queue.append(
                {
                    "count": count,
                    "delay": {
                        "timeLeftSeconds": max(0, int(app.launch_after - now)),
                        "overdue": app.launch_after <= now,
                    },
                    "since": app.queued_since,
                    "processedOffersSummary": {
                        "processedOffersCount": app.offers_processed,
                        "unusedOffersCount": app.offers_unused,
                        **(
                            {"lastUnusedOfferAt": app.last_unused_offer_at}
                            if app.last_unused_offer_at
                            else {}
                        ),
                        **(
                            {"lastUsedOfferAt": app.last_used_offer_at}
                            if app.last_used_offer_at
                            else {}
                        ),
                        # One agent: its last offer reached every step up to the one declining it.
                        "rejectSummaryLastOffers": [
                            {
                                "reason": step,
                                "declined": int(i == last),
                                "processed": int(last < 0 or i <= last),
                            }
                            for i, step in enumerate(OFFER_STEPS)
                        ],
                        "rejectSummaryLaunchAttempt": [
                            {
                                "reason": step,
                                "declined": app.declined.get(step, 0),
                                "processed": app.offers_processed if i <= reached else 0,
                            }
                            for i, step in enumerate(OFFER_STEPS)
                        ],
                    },
                    "app": self.app_json(app, []),
                }
            )
        return {"queue": queue}

    def _offered_ports(self, definitions: list[dict[str, Any]], require: bool) -> list[int] | None:
        """A port for each definition from this agent's offer; None if a required one is not
        offered. Marathon gives any offered port unless ``requirePorts`` asks for the number."""
        low, high = self.port_range
        taken = {p for a in self.apps.values() for t in a.tasks.values() for p in t.ports}
        ports: list[int] = []
        for definition in definitions:
            fixed = definition.get("port", 0)
            if require and fixed:
                if not low <= fixed <= high or fixed in taken or not _port_free(fixed):
                    return None
                ports.append(fixed)
            else:
                candidates = [p for p in range(low, high + 1) if p not in taken | set(ports)]
                random.shuffle(candidates)
                port = next((p for p in candidates if _port_free(p)), None)
                if port is None:
                    return None
                ports.append(port)
        return ports

    def _check_health(self, task: Task, index: int, check: dict[str, Any]) -> None:
        """Run one health check of a task until it ends, as Mesos (MESOS_*, COMMAND) or
        Marathon (HTTP, TCP) does; kill the task after maxConsecutiveFailures in a row."""
        started = time.monotonic()
        grace = float(check.get("gracePeriodSeconds", 300))
        limit = int(check.get("maxConsecutiveFailures", 3))
        if self._stop.wait(float(check.get("delaySeconds", 15))):
            return
        while task.state in _ACTIVE:
            passed = self._probe(task, check)
            with self.lock:
                if task.state not in _ACTIVE:
                    return
                if passed:
                    task.failures[index] = 0
                elif True in task.health or time.monotonic() - started > grace:
                    task.failures[index] += 1
                task.health[index] = passed if passed or task.failures[index] else None
                if limit and task.failures[index] >= limit:
                    log.warning(
                        "task %s: %d consecutive failures of %s health check: killing it",
                        task.id,
                        task.failures[index],
                        check.get("protocol", "HTTP"),
                    )
                    self.unhealthy_kills.append(task.id)
                    self._kill(task, self._grace(task))
                    return
            if self._stop.wait(float(check.get("intervalSeconds", 60))):
                return

    def _probe(self, task: Task, check: dict[str, Any]) -> bool:
        protocol = check.get("protocol", "HTTP")
        timeout = max(1.0, float(check.get("timeoutSeconds", 20)))
        if protocol == "COMMAND":
            try:
                result = subprocess.run(
                    ["bash", "-c", check["command"]["value"]],
                    cwd=task.sandbox,
                    env=task.env,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                return False
            return result.returncode == 0
        port = int(check.get("port") or task.ports[int(check.get("portIndex", 0))])
        # Host networking: Mesos checks the task's loopback; Marathon's own checks the host.
        host = "127.0.0.1" if protocol.startswith("MESOS_") else task.host
        if protocol.endswith("TCP"):
            try:
                socket.create_connection((host, port), timeout).close()
            except OSError:
                return False
            return True
        scheme = "https" if protocol.endswith("HTTPS") else "http"
        try:
            with urllib.request.urlopen(
                f"{scheme}://{host}:{port}{check.get('path', '/')}", timeout=timeout
            ) as answer:
                return 200 <= int(answer.status) < 400
        except (OSError, ValueError):
            return False

    def _mounts(self, definition: dict[str, Any], sandbox: Path) -> dict[str, Path]:
        """Container path -> agent folder of the app's host-path volumes; a relative container
        path is inside the sandbox, as on Mesos: a link there, nothing to rewrite."""
        mounts: dict[str, Path] = {}
        for volume in (definition.get("container") or {}).get("volumes") or []:
            if "hostPath" not in volume or "containerPath" not in volume:
                continue
            host = Path(volume["hostPath"])
            if self.agent_root is not None:
                host = self.agent_root / host.relative_to(host.anchor)
            container_path = str(volume["containerPath"])
            if container_path.startswith("/"):
                mounts[container_path] = host
            else:
                (sandbox / container_path).parent.mkdir(parents=True, exist_ok=True)
                (sandbox / container_path).symlink_to(host, target_is_directory=True)
        return mounts

    def _grace(self, task: Task) -> float:
        app = self.apps.get(task.app_id)
        return float(app.definition["taskKillGracePeriodSeconds"]) if app else 3.0

    def _kill(self, task: Task, grace: float) -> bool:
        if task.state not in _ACTIVE:
            return False
        task.state, task.kill_deadline = "TASK_KILLING", time.monotonic() + grace
        _signal(task, signal.SIGTERM)
        return True

    def _escalate(self, tasks: list[Task]) -> None:
        now = time.monotonic()
        for task in tasks:
            if task.kill_deadline is not None and now >= task.kill_deadline and _alive(task):
                log.info("task %s: grace period over, SIGKILL", task.id)
                _signal(task, signal.SIGKILL)

    # --- the API ----------------------------------------------------------------------------

    def _deploy(self, app_ids: list[str]) -> dict[str, str]:
        deployment = Deployment(
            str(uuid.uuid4()), app_ids, time.monotonic() + self.deployment_seconds
        )
        self.deployments[deployment.id] = deployment
        return {"deploymentId": deployment.id, "version": deployment.version}

    def _check_lock(self, app_id: str, force: bool) -> None:
        now = time.monotonic()
        locks = [d for d in self.deployments.values() if app_id in d.apps and d.finishes_at > now]
        if locks and not force:
            raise HttpError(
                409,
                {
                    "message": "App is locked by one or more deployments. Override with the option "
                    f"'?force=true'. View details at '/v2/deployments/{locks[0].id}'.",
                    "deployments": [{"id": d.id} for d in locks],
                },
            )
        for deployment in locks:  # force: the new deployment cancels the old
            self.deployments.pop(deployment.id, None)

    def _app(self, app_id: str) -> App:
        app = self.apps.get(normalize_id(app_id))
        if app is None:
            raise HttpError(404, {"message": f"App '{normalize_id(app_id)}' does not exist"})
        return app

    def app_json(self, app: App, embed: list[str]) -> dict[str, Any]:
        body = dict(app.definition)
        active = app.active()
        body.update(
            version=app.version,
            tasksStaged=sum(t.state == "TASK_STAGING" for t in active),
            tasksRunning=sum(t.state == "TASK_RUNNING" for t in active),
            tasksHealthy=sum(bool(t.health) and all(t.health) for t in active),
            tasksUnhealthy=sum(False in t.health for t in active),
            deployments=[{"id": d.id} for d in self.deployments.values() if app.id in d.apps],
        )
        if "app.tasks" in embed or "apps.tasks" in embed:
            body["tasks"] = [t.to_json() for t in app.tasks.values()]
        return body

    def _kill_tasks(self, tasks: list[Task], scale: bool, force: bool) -> dict[str, Any]:
        by_app: dict[str, list[Task]] = {}
        for task in tasks:
            by_app.setdefault(task.app_id, []).append(task)
        if scale:
            for app_id in by_app:
                self._check_lock(app_id, force)
        for app_id, app_tasks in by_app.items():
            app = self.apps[app_id]
            killed = sum(self._kill(task, self._grace(task)) for task in app_tasks)
            if scale:
                app.definition["instances"] = max(0, int(app.definition["instances"]) - killed)
        if scale:
            return self._deploy(sorted(by_app))
        return {"tasks": [t.to_json() for t in tasks]}

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        """Route one request; returns (status, JSON body or text)."""
        force, embed = _flag(query, "force"), query.get("embed", [])
        if path == "/ping":
            return 200, "pong"
        if path == "/v2/info":
            return 200, _info(self.url)
        if path == "/__standin__/faults" and method == "POST":
            self.inject(**body)
            return 200, {}
        if path == "/v2/apps":
            if method == "GET":
                return 200, {"apps": [self.app_json(a, embed) for a in self.apps.values()]}
            if method == "POST":
                self.validator.check("App", body)
                app = App(app_defaults(body))
                if app.id in self.apps:
                    raise HttpError(409, {"message": f"An app with id [{app.id}] already exists."})
                self.apps[app.id] = app
                self._deploy([app.id])
                return 201, self.app_json(app, [])
        if path == "/v2/queue" and method == "GET":
            return 200, self.queue_json()
        if path == "/v2/tasks" and method == "GET":
            listing = [t.to_json() for a in self.apps.values() for t in a.tasks.values()]
            return 200, {"tasks": listing}
        if path == "/v2/tasks/delete" and method == "POST":
            self.validator.check("DeleteTasks", body)
            known = {t.id: t for a in self.apps.values() for t in a.tasks.values()}
            chosen = [known[i] for i in body.get("ids", []) if i in known]
            return 200, self._kill_tasks(chosen, _flag(query, "scale"), force)
        if path == "/v2/deployments" and method == "GET":
            return 200, [d.to_json() for d in self.deployments.values()]
        match = re.fullmatch(r"/v2/deployments/([^/]+)", path)
        if match and method == "DELETE":
            if self.deployments.pop(match[1], None) is None:
                raise HttpError(404, {"message": f"DeploymentPlan {match[1]} does not exist"})
            return 200, {"deploymentId": str(uuid.uuid4()), "version": _now()}
        match = re.fullmatch(r"/v2/groups(/.*)?", path)
        if match:
            group = normalize_id(match[1] or "/")
            members = [
                a for a in self.apps.values() if (a.id + "/").startswith(group.rstrip("/") + "/")
            ]
            if method == "GET":
                return 200, {"id": group, "apps": [self.app_json(a, []) for a in members]}
            if method == "DELETE":
                if not members:
                    raise HttpError(404, {"message": f"Group '{group}' does not exist"})
                return 200, self._delete_apps(members, force)
        match = re.fullmatch(r"/v2/apps(/.+?)/tasks(/[^/]+)?", path)
        if match:
            app = self._app(match[1])
            if method == "GET" and not match[2]:
                return 200, {"tasks": [t.to_json() for t in app.tasks.values()]}
            if method == "DELETE":
                tasks = list(app.tasks.values())
                if match[2]:
                    tasks = [t for t in tasks if t.id == match[2][1:]]
                    if not tasks:
                        raise HttpError(404, {"message": f"Task '{match[2][1:]}' does not exist"})
                result = self._kill_tasks(tasks, _flag(query, "scale"), force)
                if match[2] and "tasks" in result:
                    return 200, {"task": result["tasks"][0]}
                return 200, result
        match = re.fullmatch(r"/v2/apps(/.+)", path)
        if match:
            app_id = normalize_id(match[1])
            if method == "GET":
                return 200, {"app": self.app_json(self._app(app_id), embed)}
            if method in ("PUT", "PATCH"):
                self.validator.check("AppUpdate", body)
                existing = self.apps.get(app_id)
                if existing is None:
                    self.validator.check("App", {**body, "id": app_id})
                    self.apps[app_id] = App(app_defaults({**body, "id": app_id}))
                    return 201, self._deploy([app_id])
                self._check_lock(app_id, force)
                update = {k: v for k, v in body.items() if k != "id"}
                existing.definition.update(update)
                if set(update) - {"instances"}:
                    existing.version = _now()  # a config change restarts tasks in Marathon
                    for task in existing.active():
                        self._kill(task, self._grace(task))
                    # Launch delays belong to a configuration; scaling keeps them.
                    existing.failures, existing.launch_after = 0, 0.0
                return 200, self._deploy([app_id])
            if method == "DELETE":
                return 200, self._delete_apps([self._app(app_id)], force)
        raise HttpError(404, {"message": f"The requested resource {method} {path} does not exist"})

    def _delete_apps(self, apps: list[App], force: bool) -> dict[str, str]:
        """Remove the apps at once (GET answers 404) and kill their tasks in the background."""
        for app in apps:
            self._check_lock(app.id, force)
        for app in apps:
            for task in app.tasks.values():
                self._kill(task, self._grace(task))
                self.dying.append(task)
            del self.apps[app.id]
        return self._deploy([a.id for a in apps])

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if path.startswith(fault.path) and fault.method in (None, method):
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                    self._faults_in_flight += 1
                    return fault
        return None


def _port_free(port: int) -> bool:
    """Nothing listens on ``port`` on any address of this machine."""
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _alive(task: Task) -> bool:
    return task.process is not None and poll_group(task.process) is None


def _signal(task: Task, signum: int) -> None:
    if task.process is not None:
        signal_group(task.process, signum)


def _info(url: str) -> dict[str, Any]:
    return {
        "name": "marathon",
        "version": "1.11.24-standin",
        "buildref": "dask-deploy-standin",
        "elected": True,
        "leader": url.removeprefix("http://"),
        "frameworkId": "standin-framework",
        "marathon_config": {
            "features": [],
            "task_lost_expunge_initial_delay": 300000,
            "task_lost_expunge_interval": 30000,
        },
        "zookeeper_config": {
            "zk": "zk://127.0.0.1:2181/marathon",
            "zk_compression": True,
            "zk_compression_threshold": 65536,
            "zk_connection_timeout": 10000,
            "zk_max_node_size": 1024000,
            "zk_max_versions": 50,
            "zk_session_timeout": 10000,
            "zk_timeout": 10000,
        },
        "http_config": {"http_port": 8080, "https_port": 8443},
    }


def _fault_body(status: int, standin: MarathonStandIn) -> dict[str, Any]:
    if status == 409:
        deployment = "injected-" + str(uuid.uuid4())
        return {
            "message": "App is locked by one or more deployments. Override with the option "
            f"'?force=true'. View details at '/v2/deployments/{deployment}'.",
            "deployments": [{"id": deployment}],
        }
    if status == 403:
        return {"message": "Not Authorized to perform this action!"}
    return {"message": f"injected fault: HTTP {status}"}


def _handler(standin: MarathonStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def handle(self) -> None:
            # A client killed mid-connection (a SIGKILLed scaler) is not the server's error.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                super().handle()

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

        fault_in_flight = False

        def _settle_fault(self) -> None:
            if self.fault_in_flight:
                self.fault_in_flight = False
                standin._fault_answered()

        def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            text = isinstance(body, str)
            data = (body if text else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if text else "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            # Counted before the first byte leaves: a client that has read the answer must
            # already see faults_over(), or a test checking right after it races this thread.
            self._settle_fault()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.end_headers()  # a client that timed out has gone: nobody to tell
                self.wfile.write(data)

        def _serve(self) -> None:
            url = urlsplit(self.path)
            path = re.sub("/+", "/", url.path).rstrip("/") or "/"
            query = parse_qs(url.query)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            fault = standin.take_fault(self.command, path) if path.startswith("/v2") else None
            if fault is not None:
                self.fault_in_flight = True
                try:
                    time.sleep(fault.delay)
                    if fault.status is not None:
                        return self._answer(fault.status, _fault_body(fault.status, standin))
                    self._respond(query, path, raw)
                finally:
                    self._settle_fault()
                return None
            self._respond(query, path, raw)
            return None

        def _respond(self, query: dict[str, list[str]], path: str, raw: bytes) -> None:
            try:
                body = json.loads(raw) if raw.strip() else {}
            except ValueError as error:
                return self._answer(400, {"message": f"Invalid JSON: {error}"})
            try:
                with standin.lock:
                    status, answer = standin.handle(self.command, path, query, body)
            except HttpError as error:
                return self._answer(error.status, error.body)
            except Exception as error:
                log.exception("stand-in failed on %s %s", self.command, path)
                return self._answer(500, {"message": f"stand-in error: {error}"})
            headers = {}
            if "deploymentId" in (answer if isinstance(answer, dict) else {}):
                headers["Marathon-Deployment-Id"] = answer["deploymentId"]
            self._answer(status, answer, headers)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    return Handler


@contextlib.contextmanager
def running(**kwargs: Any) -> Iterator[MarathonStandIn]:
    """``with running() as marathon:`` — a started stand-in, stopped (tasks killed) on exit."""
    standin = MarathonStandIn(**kwargs)
    with standin:
        yield standin


def main(argv: list[str] | None = None) -> int:
    """``python -m dask_deploy.testing.marathon --port 8080``: serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--schemas", type=Path, default=None, help="Marathon JSON Schemas folder")
    parser.add_argument("--workdir", type=Path, default=None, help="where task sandboxes go")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    standin = MarathonStandIn(args.port, schemas=args.schemas, workdir=args.workdir)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with standin:
        print(f"Marathon stand-in listening on {standin.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
