"""SSH: workers as ``dask worker`` process groups on a list of hosts, reached with OpenSSH.

The system ``ssh`` client does the connecting, so whatever a user already set up for it
(``~/.ssh/config``, an agent, ``ProxyJump``, certificates) works unchanged. Host keys are
always verified: ``StrictHostKeyChecking=yes`` unless ``host_key_checking: accept-new``
(trust a host's key the first time, refuse a changed one); checking cannot be turned off.

Options (``backend.options`` in the scaler configuration)::

    hosts:                       # required: where workers run, tried least loaded first
      - {host: node1, max_workers: 4}
    user: null                   # optional: login name; null: ssh's (config or local user)
    port: null                   # optional: sshd port; null: ssh's (config or 22)
    identity_file: null          # optional: private key; null: ssh's (agent, config)
    known_hosts: null            # optional: known_hosts file; null: ssh's (~/.ssh/known_hosts)
    host_key_checking: "yes"     # optional: "yes" or "accept-new"
    ssh_options: []              # optional: more `-o Key=Value` options for ssh
    connect_timeout: 10          # optional: seconds to reach a host (ssh ConnectTimeout)
    command_timeout: 30          # optional: seconds any remote call may take in all
    stop_timeout: 10             # optional: seconds between SIGTERM and SIGKILL on scale-down
    state_dir: .dask-deploy/<deployment>   # optional: folder on each host (relative: to home)
    python: python3              # optional: the interpreter on the hosts
    worker_args: []              # optional: extra `dask worker` arguments; "{host}" in one
                                 #   is replaced by the worker's host

A worker is named ``<deployment>-<host>-<n>`` (the lowest ``n`` free on that host) and runs
``<python> -m distributed.cli.dask_worker <scheduler> --name <name>`` detached in its own
session; its process group id and request time are in ``<state_dir>/<name>.pgid`` on its host.
Listing reads those files, so a restarted scaler finds every worker it started; removing
signals exactly that process group. A host that does not answer (unreachable, refused key,
timeout) is logged once and skipped; the workers last seen on it still count while the
scheduler has them, and as exited once it lost them.

The remote scripts are built by pure functions (``start_script``, ``list_script``,
``stop_script``) and sent on ssh's standard input to ``sh -s``; ``SshRunner`` is the one place
that runs ``ssh``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import signal
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from .._errors import SettingsError
from ..contract import Backend, BackendContext, Instance, InstanceState, count_requested
from ..options import BACKEND_OPTIONS, reject_unknown

logger = logging.getLogger("dask_deploy.backends.ssh")

_KNOWN = {
    "command_timeout",
    "connect_timeout",
    "host_key_checking",
    "hosts",
    "identity_file",
    "known_hosts",
    "port",
    "python",
    "scheduler_security",
    "ssh_options",
    "state_dir",
    "stop_timeout",
    "user",
    "worker_args",
}
#: ssh exits 255 for its own errors (refused connection, bad host key, failed login).
SSH_ERROR = 255
#: Seconds a host whose last start failed gets no new worker while another host has room.
START_RETRY_AFTER = 60.0
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.:-]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Host:
    host: str
    max_workers: int


@dataclass(frozen=True)
class SshSettings:
    """The backend's options, validated once."""

    deployment: str
    scheduler_address: str
    hosts: tuple[Host, ...]
    state_dir: str
    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    known_hosts: str | None = None
    host_key_checking: str = "yes"
    ssh_options: tuple[str, ...] = ()
    connect_timeout: float = 10.0
    command_timeout: float = 30.0
    stop_timeout: float = 10.0
    python: str = "python3"
    worker_args: tuple[str, ...] = ()
    #: (ca_file, cert_file, key_file) to ask a TLS scheduler which workers it still has.
    scheduler_security: tuple[str, str, str] | None = None


def ssh_argv(settings: SshSettings, host: str) -> list[str]:
    """The ``ssh`` command that runs a script read from standard input on ``host``.

    >>> s = SshSettings("d", "tcp://h:8786", (Host("n1", 1),), ".dd/d", user="u", port=2022)
    >>> ssh_argv(s, "n1")[-6:]
    ['-l', 'u', '-p', '2022', 'n1', 'sh -s']
    """
    argv = [
        "ssh",
        "-T",
        "-o",
        "BatchMode=yes",
        "-o",
        f"StrictHostKeyChecking={settings.host_key_checking}",
        "-o",
        f"ConnectTimeout={max(1, round(settings.connect_timeout))}",
    ]
    if settings.known_hosts is not None:
        argv += ["-o", f"UserKnownHostsFile={settings.known_hosts}"]
    if settings.identity_file is not None:
        argv += ["-i", settings.identity_file, "-o", "IdentitiesOnly=yes"]
    for option in settings.ssh_options:
        argv += ["-o", option]
    if settings.user is not None:
        argv += ["-l", settings.user]
    if settings.port is not None:
        argv += ["-p", str(settings.port)]
    return [*argv, host, "sh -s"]


def worker_name(deployment: str, host: str, index: int) -> str:
    """The name of worker ``index`` on ``host``; also its Dask worker name.

    >>> worker_name("dask", "127.0.0.2", 0)
    'dask-127.0.0.2-0'
    """
    return f"{deployment}-{host}-{index}"


def worker_argv(settings: SshSettings, host: str, name: str) -> list[str]:
    """The worker's command line on ``host``; its local directory is under the state folder."""
    return [
        settings.python,
        "-m",
        "distributed.cli.dask_worker",
        settings.scheduler_address,
        "--name",
        name,
        "--local-directory",
        f"{settings.state_dir}/{name}",
        *(arg.replace("{host}", host) for arg in settings.worker_args),
    ]


def _state_dir(settings: SshSettings) -> str:
    # "~" is not expanded inside quotes; a relative path is already relative to the home.
    return shlex.quote(settings.state_dir.removeprefix("~/"))


def start_script(settings: SshSettings, host: str, name: str, now: float) -> str:
    """Start one worker detached (``setsid``) and wait until its record is written.

    The child writes ``<pgid> <requested_at>`` to a temporary file and renames it, so a listing
    never reads half a record; then it ``exec``s the worker, keeping its pid as the group id.
    """
    record = shlex.quote(f"{name}.pgid")
    command = shlex.join(worker_argv(settings, host, name))
    child = f'echo "$$ {now:.3f}" > {record}.new && mv {record}.new {record} && exec {command}'
    python = shlex.quote(settings.python)
    log = shlex.quote(f"{name}.log")
    return f"""set -e
umask 077
mkdir -p {_state_dir(settings)}
cd {_state_dir(settings)}
command -v {python} >/dev/null || {{ echo "{settings.python}: command not found" >&2; exit 127; }}
rm -f {record}
setsid sh -c {shlex.quote(child)} </dev/null >{log} 2>&1 &
i=0
while [ ! -e {record} ]; do
  i=$((i + 1))
  [ "$i" -le 100 ] || {{ echo "{name} did not start: $(tail -n 1 {log})" >&2; exit 1; }}
  sleep 0.1
done
"""


def list_script(settings: SshSettings, host: str) -> str:
    """Print ``<name> running|exited <requested_at> [last log line]`` per worker on ``host``.

    An exited worker is reported once with the last line of its log, then forgotten.
    """
    prefix = shlex.quote(f"{settings.deployment}-{host}-")
    return f"""cd {_state_dir(settings)} 2>/dev/null || exit 0
for record in {prefix}*.pgid; do
  [ -e "$record" ] || continue
  name=${{record%.pgid}}
  read -r pgid at < "$record" || continue
  if kill -0 "-$pgid" 2>/dev/null; then
    echo "$name running $at"
  else
    echo "$name exited $at $(tail -n 1 "$name.log" 2>/dev/null | tr -d '\\r')"
    rm -rf "$record" "$name"
  fi
done
"""


def stop_script(settings: SshSettings, names: Collection[str]) -> str:
    """SIGTERM the process groups of ``names``, SIGKILL what is left after ``stop_timeout``."""
    quoted = " ".join(shlex.quote(name) for name in sorted(names))
    ticks = max(1, round(settings.stop_timeout * 10))
    return f"""cd {_state_dir(settings)} 2>/dev/null || exit 0
groups=""
for name in {quoted}; do
  [ -e "$name.pgid" ] || continue
  read -r pgid _ < "$name.pgid" || continue
  kill -TERM "-$pgid" 2>/dev/null || true
  groups="$groups $pgid"
done
i=0
while [ "$i" -lt {ticks} ]; do
  alive=""
  for pgid in $groups; do kill -0 "-$pgid" 2>/dev/null && alive="$alive $pgid"; done
  groups="$alive"
  [ -n "$groups" ] || break
  i=$((i + 1))
  sleep 0.1
done
# Only the groups still there: an ended group's id may be another process's by now.
for pgid in $groups; do kill -KILL "-$pgid" 2>/dev/null || true; done
for name in {quoted}; do rm -rf "$name.pgid" "$name"; done
"""


@dataclass(frozen=True)
class Listed:
    """One line of the list script's output."""

    instance: Instance
    last_log_line: str


def parse_listing(text: str) -> list[Listed]:
    """The list script's output; lines it did not write are ignored.

    >>> [x.instance.state.value for x in parse_listing("d-h-0 running 1.5\\nd-h-1 exited 2 boom")]
    ['running', 'exited']
    """
    listed = []
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 3 or parts[1] not in ("running", "exited"):
            continue
        try:
            requested_at = float(parts[2])
        except ValueError:
            continue
        state = InstanceState.RUNNING if parts[1] == "running" else InstanceState.EXITED
        listed.append(Listed(Instance(parts[0], state, requested_at), "".join(parts[3:])))
    return listed


def free_index(deployment: str, host: str, taken: Collection[str]) -> int:
    """The lowest ``n`` with no worker ``<deployment>-<host>-<n>`` in ``taken``.

    >>> free_index("d", "h", ["d-h-0", "d-h-2"])
    1
    """
    index = 0
    while worker_name(deployment, host, index) in taken:
        index += 1
    return index


def placements(hosts: Sequence[Host], running: Mapping[str, int], count: int) -> list[str]:
    """Hosts for ``count`` new workers, each to the least loaded host with room.

    Load is running workers over ``max_workers``; ties go to the host listed first.

    >>> placements([Host("a", 2), Host("b", 1)], {"a": 1}, 3)
    ['b', 'a']
    """
    load = {host.host: running.get(host.host, 0) for host in hosts}
    chosen: list[str] = []
    for _ in range(count):
        open_hosts = [h for h in hosts if load[h.host] < h.max_workers]
        if not open_hosts:
            break
        best = min(open_hosts, key=lambda h: load[h.host] / h.max_workers)
        chosen.append(best.host)
        load[best.host] += 1
    return chosen


class RemoteError(Exception):
    """A remote call failed; ``unreachable`` when ssh itself failed (exit 255 or timeout)."""

    def __init__(self, host: str, message: str, *, unreachable: bool) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host
        self.message = message
        self.unreachable = unreachable


class SshRunner:
    """Runs one script on one host through ``ssh``, bounded by ``command_timeout``."""

    def __init__(self, settings: SshSettings) -> None:
        self.settings = settings

    async def run(self, host: str, script: str) -> str:
        process = await asyncio.create_subprocess_exec(
            *ssh_argv(self.settings, host),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(
                process.communicate(script.encode()), self.settings.command_timeout
            )
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            raise RemoteError(
                host, f"no answer within {self.settings.command_timeout:g}s", unreachable=True
            ) from None
        if process.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            message = lines[-1] if lines else f"exit status {process.returncode}"
            raise RemoteError(host, message, unreachable=process.returncode == SSH_ERROR)
        return out.decode(errors="replace")


#: Names of the workers the scheduler has, asked only while a host does not answer.
WorkerNames = Callable[[], Awaitable[frozenset[str]]]


class SshBackend:
    """Starts, lists and stops one deployment's workers on its hosts."""

    def __init__(
        self, settings: SshSettings, runner: SshRunner, scheduler_workers: WorkerNames
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.scheduler_workers = scheduler_workers
        #: What each host reported last: the workers of a host that stops answering.
        self._last_seen: dict[str, list[Instance]] = {}
        #: Names to stop on a host once it answers again (removed while it did not).
        self._stop_later: dict[str, set[str]] = {}
        self._silent: set[str] = set()
        #: The last start failure per host and when: logged once, and the host gets no new
        #: worker for START_RETRY_AFTER seconds while other hosts have room.
        self._start_failed: dict[str, tuple[str, float]] = {}
        self._full_logged = False

    def _host_of(self, name: str) -> str | None:
        for host in self.settings.hosts:
            prefix = f"{self.settings.deployment}-{host.host}-"
            if name.startswith(prefix) and name[len(prefix) :].isdigit():
                return host.host
        return None

    def _answered(self, host: str) -> None:
        if host in self._silent:
            self._silent.discard(host)
            logger.info("ssh host %s answers again", host)

    def _did_not_answer(self, error: RemoteError) -> None:
        if error.host not in self._silent:
            self._silent.add(error.host)
            logger.warning("ssh host %s skipped: %s", error.host, error.message)

    async def _list_host(self, host: str) -> list[Instance] | None:
        """The host's workers, or None when it does not answer."""
        try:
            if self._stop_later.get(host):
                await self.runner.run(host, stop_script(self.settings, self._stop_later[host]))
                self._stop_later.pop(host, None)
            listed = parse_listing(await self.runner.run(host, list_script(self.settings, host)))
        except RemoteError as error:
            # A host whose listing fails (unreachable, or a broken state folder) is skipped
            # like a silent one: one host must not stop the scaling on the others.
            self._did_not_answer(error)
            return None
        self._answered(host)
        for item in listed:
            if item.instance.state is InstanceState.EXITED:
                logger.info(
                    "worker %s on %s exited; last line of its log: %s",
                    item.instance.name,
                    host,
                    item.last_log_line or "(empty)",
                )
        instances = [item.instance for item in listed]
        self._last_seen[host] = [i for i in instances if i.state is InstanceState.RUNNING]
        return instances

    async def _listing(self) -> dict[str, list[Instance] | None]:
        hosts = [host.host for host in self.settings.hosts]
        found = await asyncio.gather(*(self._list_host(host) for host in hosts))
        return dict(zip(hosts, found, strict=True))

    async def instances(self) -> list[Instance]:
        listing = await self._listing()
        result = [i for found in listing.values() if found is not None for i in found]
        silent = [host for host, found in listing.items() if found is None]
        remembered = [i for host in silent for i in self._last_seen.get(host, [])]
        if remembered:
            # A silent host's workers may well be running: they count while the scheduler
            # has them, and are exited once it lost them (then forgotten).
            connected = await self.scheduler_workers()
            for host in silent:
                kept = [i for i in self._last_seen.get(host, []) if i.name in connected]
                lost = [i for i in self._last_seen.get(host, []) if i.name not in connected]
                result += kept
                result += [Instance(i.name, InstanceState.EXITED, i.requested_at) for i in lost]
                self._last_seen[host] = kept
        return result

    async def scale_up(self, n: int) -> None:
        listing = await self._listing()
        known = [i for found in listing.values() if found is not None for i in found]
        silent = {host for host, found in listing.items() if found is None}
        remembered = [i for host in silent for i in self._last_seen.get(host, [])]
        missing = n - count_requested(known) - len(remembered)
        if missing <= 0:
            return
        answering = [h for h in self.settings.hosts if h.host not in silent]
        now = time.monotonic()
        working = [
            h
            for h in answering
            if now - self._start_failed.get(h.host, ("", -START_RETRY_AFTER))[1]
            >= START_RETRY_AFTER
        ]
        running = {
            host: count_requested(found) for host, found in listing.items() if found is not None
        }
        chosen = placements(working, running, missing) or placements(answering, running, missing)
        short = len(chosen) < missing
        if short and not self._full_logged:
            logger.warning(
                "only %d of %d more workers placed: every answering host is at its max_workers",
                len(chosen),
                missing,
            )
        self._full_logged = short
        taken = {i.name for i in known}
        names = []
        for host in chosen:
            index = free_index(self.settings.deployment, host, taken)
            names.append((host, worker_name(self.settings.deployment, host, index)))
            taken.add(names[-1][1])
        await asyncio.gather(*(self._start(host, name) for host, name in names))

    async def _start(self, host: str, name: str) -> None:
        try:
            await self.runner.run(host, start_script(self.settings, host, name, time.time()))
        except RemoteError as error:
            if error.unreachable:
                self._did_not_answer(error)
                return
            if self._start_failed.get(host, ("", 0.0))[0] != error.message:
                logger.warning("starting %s on %s failed: %s", name, host, error.message)
            self._start_failed[host] = (error.message, time.monotonic())
            return
        self._start_failed.pop(host, None)
        logger.info("started %s on %s", name, host)

    async def scale_down(self, names: Collection[str]) -> None:
        by_host: dict[str, set[str]] = {}
        for name in names:
            host = self._host_of(name)
            if host is not None:
                by_host.setdefault(host, set()).add(name)
        for host, wanted in sorted(by_host.items()):
            try:
                await self.runner.run(host, stop_script(self.settings, wanted))
            except RemoteError as error:
                if not error.unreachable:
                    raise
                self._did_not_answer(error)
                # Stopped once the host answers again; not reported meanwhile.
                self._stop_later.setdefault(host, set()).update(wanted)
            self._last_seen[host] = [
                i for i in self._last_seen.get(host, []) if i.name not in wanted
            ]

    async def close(self) -> None:
        return None


def _number(options: Mapping[str, object], key: str, default: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise SettingsError(f"backend.options.{key}", value, "a number of seconds > 0")
    return float(value)


def _optional_text(options: Mapping[str, object], key: str, allowed: str) -> str | None:
    value = options.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise SettingsError(f"backend.options.{key}", value, allowed)
    return value


def _strings(options: Mapping[str, object], key: str) -> tuple[str, ...]:
    value = options.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SettingsError(f"backend.options.{key}", value, "a list of strings")
    return tuple(value)


def _hosts(value: object) -> tuple[Host, ...]:
    allowed = "a non-empty list of {host: <name or address>, max_workers: <integer >= 1>}"
    if not isinstance(value, list) or not value:
        raise SettingsError("backend.options.hosts", value, allowed)
    hosts = []
    for index, entry in enumerate(value):
        key = f"backend.options.hosts[{index}]"
        if not isinstance(entry, Mapping) or set(entry) - {"host", "max_workers"}:
            raise SettingsError(key, entry, allowed)
        host, most = entry.get("host"), entry.get("max_workers", 1)
        if not isinstance(host, str) or not _HOST.match(host):
            raise SettingsError(f"{key}.host", host, "a host name or address")
        if isinstance(most, bool) or not isinstance(most, int) or most < 1:
            raise SettingsError(f"{key}.max_workers", most, "an integer >= 1")
        hosts.append(Host(host, most))
    if len({h.host for h in hosts}) != len(hosts):
        raise SettingsError("backend.options.hosts", value, "each host listed once")
    return tuple(hosts)


def load_settings(context: BackendContext) -> SshSettings:
    """Validate ``backend.options``; raise :class:`SettingsError` naming the bad key."""
    options = dict(context.options)
    reject_unknown(options, _KNOWN, prefix=BACKEND_OPTIONS)
    port = options.get("port")
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535
    ):
        raise SettingsError("backend.options.port", port, "null or an integer 1-65535")
    checking = options.get("host_key_checking", "yes")
    if checking not in ("yes", "accept-new"):
        raise SettingsError("backend.options.host_key_checking", checking, '"yes" or "accept-new"')
    ssh_options = _strings(options, "ssh_options")
    for option in ssh_options:
        if re.match(r"(?i)\s*StrictHostKeyChecking", option):
            raise SettingsError(
                "backend.options.ssh_options", option, "host_key_checking to set host key checks"
            )
    state_dir = options.get("state_dir", f".dask-deploy/{context.deployment}")
    if not isinstance(state_dir, str) or not state_dir.strip("/~"):
        raise SettingsError("backend.options.state_dir", state_dir, "a folder path")
    python = options.get("python", "python3")
    if not isinstance(python, str) or not python:
        raise SettingsError("backend.options.python", python, "an interpreter name or path")
    security = options.get("scheduler_security")
    files = ("ca_file", "cert_file", "key_file")
    if security is not None and not (
        isinstance(security, Mapping)
        and set(security) == set(files)
        and all(isinstance(security[f], str) for f in files)
    ):
        raise SettingsError(
            "backend.options.scheduler_security", security, "null or {ca_file, cert_file, key_file}"
        )
    return SshSettings(
        deployment=context.deployment,
        scheduler_address=context.scheduler_address,
        hosts=_hosts(options.get("hosts")),
        state_dir=state_dir.rstrip("/"),
        user=_optional_text(options, "user", "null or a login name"),
        port=port,
        identity_file=_optional_text(options, "identity_file", "null or a key file path"),
        known_hosts=_optional_text(options, "known_hosts", "null or a known_hosts file path"),
        host_key_checking=str(checking),
        ssh_options=ssh_options,
        connect_timeout=_number(options, "connect_timeout", 10),
        command_timeout=_number(options, "command_timeout", 30),
        stop_timeout=_number(options, "stop_timeout", 10),
        python=python,
        worker_args=_strings(options, "worker_args"),
        scheduler_security=None
        if security is None
        else (str(security["ca_file"]), str(security["cert_file"]), str(security["key_file"])),
    )


def scheduler_workers(settings: SshSettings) -> WorkerNames:
    """Ask the scheduler (over TLS when configured) for the names of its workers."""
    from ..config import SchedulerSettings, SecuritySettings
    from ..observe import connect

    security = (
        None
        if settings.scheduler_security is None
        else SecuritySettings(*settings.scheduler_security)
    )

    async def names() -> frozenset[str]:
        link = connect(SchedulerSettings(address=settings.scheduler_address, security=security))
        try:
            return await link.worker_names()
        finally:
            await link.close()

    return names


def create(context: BackendContext) -> Backend:
    """Build the SSH backend from the scaler configuration's ``backend.options``."""
    settings = load_settings(context)
    return SshBackend(settings, SshRunner(settings), scheduler_workers(settings))


__all__ = ["SshBackend", "create"]
