"""Marathon: the workers are the tasks of one app, each named by its task id.

Options (``backend.options`` in the scaler configuration)::

    url: http://marathon.mesos:8080   # required: Marathon's base URL (or a list of them)
    app_id: /dask/worker              # required: the worker app, rendered with instances: 0
    credentials_file: null            # optional: YAML file {username, password} or {token}
    tls_verify: true                  # optional: verify Marathon's certificate; or a CA bundle path
    force: false                      # optional: override deployment locks (?force=true)
    request_timeout: 10               # optional: seconds any one HTTP request may take
    retry_for: 1                      # optional: seconds to keep retrying 409 / 5xx / no answer
                                      # within one call; about the scaler's loop.interval

A Marathon that does not answer fails the call after ``request_timeout`` (a hung request never
holds a tick for ever). The scaler retries a failed tick at its interval from a fresh
observation, so retrying one call for longer than about one interval only delays that look
(and keeps retrying a decision that may be stale, e.g. against a deployment lock that lasts
until new tasks are healthy): hence the short ``retry_for``.

Credentials never come from the rendered manifest: ``credentials_file`` on the scaler's host, or
the environment (``MARATHON_USERNAME`` + ``MARATHON_PASSWORD``, or ``MARATHON_AUTH_TOKEN``).

The worker app starts ``dask worker --name $MESOS_TASK_ID``, so ``Instance.name`` is the task id.
``scale_down`` kills exactly those tasks and lowers ``instances`` in the same call
(``POST /v2/tasks/delete?scale=true``), so Marathon neither restarts them nor picks other victims.
Requests are built by pure functions; :meth:`MarathonBackend._call` is the one place that sends,
in a thread because the ``marathon`` client is synchronous.

Two limits of ``marathon`` 0.13 (the last release) shape how it is used here: its models reject
any response field they do not know (``TypeError: unexpected keyword argument``; Marathon added
``role``, ``check``, ``tasksStats``... after it), so responses are read as plain JSON through the
client's transport; and its JSON encoders call ``collections.Iterable``, removed in Python 3.10,
for nested model objects, so the only body we encode with it is the flat ``{"instances": n}``
(the kill body is plain JSON built by the client itself).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .._errors import SettingsError
from ..contract import Backend, BackendContext, Instance, InstanceState
from ..options import BACKEND_OPTIONS, reject_unknown
from ._retry import retry_with_backoff

log = logging.getLogger(__name__)
T = TypeVar("T")

PENDING_STATES = frozenset({"TASK_STAGING", "TASK_STARTING", "TASK_STAGED"})
#: Ended, or on the way out: killing an already-killing task would lower ``instances`` twice.
EXITED_STATES = frozenset(
    {
        "TASK_KILLING",
        "TASK_KILLED",
        "TASK_FAILED",
        "TASK_FINISHED",
        "TASK_ERROR",
        "TASK_LOST",
        "TASK_DROPPED",
        "TASK_GONE",
        "TASK_GONE_BY_OPERATOR",
    }
)
_OPTIONS = {
    "url",
    "app_id",
    "credentials_file",
    "tls_verify",
    "force",
    "request_timeout",
    "retry_for",
}


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None
    token: str | None = None


@dataclass(frozen=True)
class MarathonSettings:
    """The backend's options, validated once."""

    urls: tuple[str, ...]
    app_id: str
    credentials: Credentials
    tls_verify: bool | str = True
    force: bool = False
    request_timeout: float = 10.0
    retry_for: float = 1.0


@dataclass(frozen=True)
class ScaleRequest:
    """``PUT /v2/apps/{app_id}`` with ``{"instances": n}``."""

    app_id: str
    instances: int
    force: bool


@dataclass(frozen=True)
class KillRequest:
    """``POST /v2/tasks/delete?scale=true`` with ``{"ids": [...]}``."""

    task_ids: tuple[str, ...]
    force: bool


def load_credentials(path: str | None, env: Mapping[str, str]) -> Credentials:
    """Credentials from a YAML file ``{username, password}`` / ``{token}``, else the environment."""
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as error:
            raise SettingsError(
                "backend.options.credentials_file", path, f"a readable YAML file ({error})"
            ) from None
        if not isinstance(data, dict) or not (
            {"token"} == data.keys() or {"username", "password"} == data.keys()
        ):
            raise SettingsError(
                "backend.options.credentials_file",
                path,
                "a mapping of exactly {username, password} or {token}",
            )
        return Credentials(data.get("username"), data.get("password"), data.get("token"))
    if env.get("MARATHON_AUTH_TOKEN"):
        return Credentials(token=env["MARATHON_AUTH_TOKEN"])
    if env.get("MARATHON_USERNAME") and env.get("MARATHON_PASSWORD"):
        return Credentials(env["MARATHON_USERNAME"], env["MARATHON_PASSWORD"])
    return Credentials()


def load_settings(context: BackendContext, env: Mapping[str, str] = os.environ) -> MarathonSettings:
    """Validate ``backend.options``; raise :class:`SettingsError` naming the bad key."""
    options = dict(context.options)
    reject_unknown(options, _OPTIONS, prefix=BACKEND_OPTIONS)
    url = options.get("url")
    urls = tuple(url) if isinstance(url, list) else (url,)
    if not urls or not all(
        isinstance(u, str) and u.startswith(("http://", "https://")) for u in urls
    ):
        raise SettingsError(
            "backend.options.url", url, "an http:// or https:// URL, or a list of them"
        )
    app_id = options.get("app_id")
    if not isinstance(app_id, str) or not app_id.strip("/"):
        raise SettingsError(
            "backend.options.app_id", app_id, "the worker app's id, e.g. /dask/worker"
        )
    credentials_file = options.get("credentials_file")
    if credentials_file is not None and not isinstance(credentials_file, str):
        raise SettingsError("backend.options.credentials_file", credentials_file, "a path or null")
    verify = options.get("tls_verify", True)
    if not isinstance(verify, bool | str):
        raise SettingsError("backend.options.tls_verify", verify, "true, false or a CA bundle path")
    force = options.get("force", False)
    if not isinstance(force, bool):
        raise SettingsError("backend.options.force", force, "true or false")
    numbers = {}
    for key, default in (("request_timeout", 10.0), ("retry_for", 1.0)):
        value = options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise SettingsError(f"backend.options.{key}", value, "a number of seconds > 0")
        numbers[key] = float(value)
    return MarathonSettings(
        urls=tuple(str(u).rstrip("/") for u in urls),
        app_id="/" + app_id.strip("/"),
        credentials=load_credentials(credentials_file, env),
        tls_verify=verify,
        force=force,
        **numbers,
    )


def task_state(marathon_state: str | None) -> InstanceState:
    """Map a Marathon task state to pending, running or exited."""
    if marathon_state in PENDING_STATES or marathon_state is None:
        return InstanceState.PENDING
    if marathon_state in EXITED_STATES:
        return InstanceState.EXITED
    return InstanceState.RUNNING


def _unix_time(timestamp: object) -> float:
    if not isinstance(timestamp, str):
        return 0.0
    try:
        return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def parse_tasks(body: Mapping[str, Any]) -> list[Instance]:
    """Instances from a ``{"tasks": [...]}`` body (``id``, ``state``, ``stagedAt``)."""
    return [
        Instance(str(task["id"]), task_state(task.get("state")), _unix_time(task.get("stagedAt")))
        for task in body.get("tasks", [])
    ]


#: Marks an instance Marathon holds in its launch queue (no task yet): ``<app>.queued-<n>``.
QUEUED_MARK = ".queued-"


def queue_reason(entry: Mapping[str, Any]) -> str | None:
    """Why Marathon cannot launch the app's queued instances, from its launch queue entry.

    ``rejectSummaryLastOffers`` counts, for the last offer of each agent, the offers that
    reached each matching step and those declined there. When every agent's last offer was
    declined, no offer fits (ports, resources, constraints...): another instance of the same
    app would wait the same way. ``None`` while some offer fits or none has been processed.
    """
    summary = entry.get("processedOffersSummary") or {}
    steps = summary.get("rejectSummaryLastOffers") or []
    declined = [step for step in steps if step.get("declined")]
    agents = max((int(step.get("processed") or 0) for step in steps), default=0)
    if not declined or sum(int(step["declined"]) for step in declined) < agents:
        return None
    parts = ", ".join(f"{step['reason']} ({step['declined']} of {agents})" for step in declined)
    return f"no Mesos offer fits, Marathon's launch queue says: {parts}"


def queued_instances(app_id: str, count: int, entry: Mapping[str, Any] | None) -> list[Instance]:
    """One pending instance per instance Marathon cannot launch (no task id, no offer fits).

    Only stuck ones are listed: an instance Marathon is merely launching gets its task id in
    a moment, and listing it under another name first would rename an instance.
    """
    reason = None if entry is None else queue_reason(entry)
    if count <= 0 or reason is None or entry is None:
        return []
    since = _unix_time(entry.get("since"))
    slug = app_id.strip("/").replace("/", "_")
    return [
        Instance(f"{slug}{QUEUED_MARK}{i}", InstanceState.PENDING, since, reason)
        for i in range(count)
    ]


def cancel_queued_request(
    settings: MarathonSettings, instances: int, active: int, cancelled: int
) -> ScaleRequest | None:
    """Lower ``instances`` by the queued instances cancelled, never below the live tasks, so
    Marathon only shortens its launch queue and kills nothing."""
    target = max(active, instances - cancelled)
    return ScaleRequest(settings.app_id, target, settings.force) if target < instances else None


def scale_up_request(settings: MarathonSettings, current: int, n: int) -> ScaleRequest | None:
    """The app update that raises ``instances`` to ``n``; None when it is already there."""
    return ScaleRequest(settings.app_id, n, settings.force) if n > current else None


def kill_request(
    settings: MarathonSettings, live: Iterable[Instance], names: Collection[str]
) -> KillRequest | None:
    """Kill exactly the named tasks that are still alive; None when there are none.

    Unknown and already-ended names are dropped: with ``scale=true`` each killed task lowers
    ``instances`` by one, so killing a task twice would remove a worker nobody retired.
    """
    doomed = sorted(
        i.name
        for i in live
        if i.name in set(names)
        and i.state is not InstanceState.EXITED
        and QUEUED_MARK not in i.name  # no task yet: cancelled by lowering instances
    )
    return KillRequest(tuple(doomed), settings.force) if doomed else None


def is_retryable(error: BaseException) -> bool:
    """409 (deployment lock), 5xx and no answer at all are worth waiting for."""
    from marathon.exceptions import ConflictError, InternalServerError, NoResponseError

    return isinstance(error, ConflictError | InternalServerError | NoResponseError)


class MarathonBackend:
    """Scales, kills and lists the tasks of one worker app."""

    def __init__(
        self, settings: MarathonSettings, sleep: Callable[[float], Any] = asyncio.sleep
    ) -> None:
        from marathon import MarathonClient

        # The client logs every response at INFO and every 409 at ERROR; errors reach us as
        # exceptions, and _call logs each retry with its reason.
        logging.getLogger("marathon").setLevel(logging.CRITICAL)
        self.settings = settings
        self._sleep = sleep
        credentials = settings.credentials
        self.client = MarathonClient(
            list(settings.urls),
            username=credentials.username,
            password=credentials.password,
            auth_token=credentials.token,
            timeout=settings.request_timeout,
            verify=settings.tls_verify,
        )

    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Send in a thread; back off and retry 409 / 5xx / no answer until retry_for."""
        return await retry_with_backoff(
            lambda: asyncio.to_thread(function, *args, **kwargs),
            is_retryable=is_retryable,
            retry_for=self.settings.retry_for,
            sleep=self._sleep,
            first_delay=0.25,
            log=log,
        )

    def _path_id(self) -> str:
        return self.settings.app_id.lstrip("/")  # the client prefixes /v2/apps/

    def _get(self, path: str) -> Any:
        # The client's models reject any field they do not know (marathon-python issues #140,
        # #237, #278, #279: e.g. "role", "check", "tasksStats"), so reads go through its
        # transport (servers, auth, TLS, error mapping) and are parsed here from plain JSON.
        return self.client._do_request("GET", path).json()

    async def instances(self) -> list[Instance]:
        """The app's tasks, and an instance for each one Marathon has not launched yet, with
        the reason from its launch queue (``/v2/queue``, asked only when some are queued)."""
        app = (await self._call(self._get, f"/v2/apps/{self._path_id()}?embed=app.tasks"))["app"]
        tasks = parse_tasks(app)
        live = sum(1 for task in tasks if task.state is not InstanceState.EXITED)
        queued = int(app.get("instances", 0)) - live
        if queued <= 0:
            return tasks
        queue = (await self._call(self._get, "/v2/queue")).get("queue") or []
        entry = next(
            (e for e in queue if (e.get("app") or {}).get("id") == self.settings.app_id), None
        )
        return tasks + queued_instances(self.settings.app_id, queued, entry)

    async def scale_up(self, n: int) -> None:
        from marathon.models import MarathonApp

        app = (await self._call(self._get, f"/v2/apps/{self._path_id()}"))["app"]
        request = scale_up_request(self.settings, int(app.get("instances", 0)), n)
        if request is not None:
            log.info("marathon: %s instances %s -> %d", request.app_id, app.get("instances"), n)
            update = MarathonApp(instances=request.instances)
            await self._call(self.client.update_app, self._path_id(), update, force=request.force)

    async def scale_down(self, names: Collection[str]) -> None:
        queued = [name for name in names if QUEUED_MARK in name]
        if queued:
            await self._cancel_queued(len(queued))
        request = kill_request(self.settings, await self.instances(), names)
        if request is not None:
            log.info("marathon: killing %s and scaling down", ", ".join(request.task_ids))
            await self._call(
                self.client.kill_given_tasks,
                list(request.task_ids),
                scale=True,
                force=request.force,
            )

    async def _cancel_queued(self, count: int) -> None:
        from marathon.models import MarathonApp

        app = (await self._call(self._get, f"/v2/apps/{self._path_id()}?embed=app.tasks"))["app"]
        live = sum(1 for t in parse_tasks(app) if t.state is not InstanceState.EXITED)
        request = cancel_queued_request(self.settings, int(app.get("instances", 0)), live, count)
        if request is not None:
            log.info(
                "marathon: %s instances %s -> %d (not launched yet: cancelled)",
                request.app_id,
                app.get("instances"),
                request.instances,
            )
            update = MarathonApp(instances=request.instances)
            await self._call(self.client.update_app, self._path_id(), update, force=request.force)

    async def close(self) -> None:
        self.client.session.close()
        self.client.sse_session.close()


def create(context: BackendContext) -> Backend:
    """Build the Marathon backend from the scaler configuration's ``backend.options``."""
    return MarathonBackend(load_settings(context))


__all__ = [
    "QUEUED_MARK",
    "MarathonBackend",
    "cancel_queued_request",
    "create",
    "kill_request",
    "load_settings",
    "parse_tasks",
    "queue_reason",
    "queued_instances",
    "scale_up_request",
]
