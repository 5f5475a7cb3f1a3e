"""The control loop: observe the scheduler and the backend, ask the policy, act.

Level-triggered: every tick starts from what the scheduler and the resource
manager report *now*, so a scaler killed and restarted at any moment converges
to the right count without duplicating or orphaning an instance.

Safe scale-down: instances whose worker never connected are cancelled first;
connected workers are retired through the scheduler (``retire_workers`` by name,
closing and removing them), and only the names the scheduler reports retired
are removed from the backend. While the scheduler is unreachable the loop holds.

Whatever the policy answers, the loop enforces the invariants (:func:`dask_deploy.steps.enforce`):
targets within ``[minimum, maximum]``, scale-down only of instances this backend launched. Each
tick's decision is taken by the pure steps of :mod:`dask_deploy.steps`, the same the simulator
runs, and logged with the policy's registry name.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from . import steps
from .backends import Backend, BackendContext, InstanceState, load_backend_factory
from .backends.batch import HandsOverAtWalltime
from .config import LoopSettings, PolicyConfig, ScalerConfig, load_config
from .metrics import ScalerMetrics
from .observe import SchedulerLink, connect, resolve_address
from .options import BACKEND_OPTIONS, POLICY_OPTIONS, validate_plugin_options
from .policy import (
    Decision,
    Hold,
    Observation,
    Policy,
    PolicySettings,
    ScaleDown,
    ScaleUp,
    describe,
    load_policy_factory,
)
from .steps import Bounds, DecisionRecord, LoopMemory

logger = logging.getLogger("dask_deploy.scaler")
T = TypeVar("T")

#: Consecutive failures are retried at the plain interval for this many seconds, so a short
#: outage (an API server or scheduler restarting) is over for us within one interval.
PROMPT_RETRY_WINDOW = 30.0
#: Longer outages back off: each wait is half the outage so far, at most this many seconds.
MAX_BACKOFF = 30.0
#: Share of the interval the loop still waits after a tick that took longer than the interval.
MIN_REST = 0.1
#: Seconds a tick in progress may still take once the scaler is asked to stop.
STOP_GRACE = 5.0


@dataclass
class ConfigSource:
    """The file the running configuration was read from, so the loop can read it again.

    ``overrides`` are the command line's (they keep winning over the file); ``address`` is the
    scheduler address the backend was built with. ``files`` are the configuration file and
    every file a backend option names (the worker template or job script), compared by their
    content: a Kubernetes ConfigMap volume replaces its files through a symlink, an editor may
    write a new file, and a ``touch`` alone changes nothing.
    """

    path: Path
    config: ScalerConfig
    address: str
    overrides: Mapping[str, object] = field(default_factory=dict)
    signature: tuple[tuple[str, int, int, int], ...] = field(init=False, default=())
    digest: str = field(init=False, default="")
    backend_digest: str = field(init=False, default="")
    """The content of the backend's files when the running backend was built."""

    def __post_init__(self) -> None:
        self.signature, self.digest = self._signature(), self._digest()
        self.backend_digest = self.backend_files_digest()

    def files(self) -> list[Path]:
        """The configuration file and the files its backend options name."""
        named = [
            Path(value)
            for value in self.config.backend.options.values()
            if isinstance(value, str) and value and Path(value).is_file()
        ]
        return [self.path, *named]

    def _signature(self) -> tuple[tuple[str, int, int, int], ...]:
        signature = []
        for path in self.files():
            try:
                stat = os.stat(path)  # follows a ConfigMap's ..data symlink
            except OSError:
                signature.append((str(path), -1, -1, -1))
                continue
            signature.append((str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino))
        return tuple(signature)

    def _digest(self) -> str:
        return files_digest(self.files())

    def backend_files_digest(self) -> str:
        """The content of the files the backend options name (not the configuration file)."""
        return files_digest(self.files()[1:])

    def changed(self) -> bool:
        """Whether a watched file's content changed since the last look (cheap when not)."""
        signature = self._signature()
        if signature == self.signature:
            return False
        self.signature = signature
        digest = self._digest()
        if digest == self.digest:
            return False
        self.digest = digest
        return True

    def adopt(self, config: ScalerConfig) -> None:
        """``config`` is now the running one: watch the files it names."""
        self.config = config
        self.signature, self.digest = self._signature(), self._digest()


def files_digest(paths: list[Path]) -> str:
    """One hash of the names and contents of ``paths`` (a missing file counts as such)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path).encode() + b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"\0missing")
    return digest.hexdigest()


#: What a running scaler cannot change without a restart (it would be another deployment,
#: another scheduler or another listening socket).
RESTART_ONLY = ("deployment", "scheduler", "metrics")


def config_changes(old: ScalerConfig, new: ScalerConfig) -> list[str]:
    """``key: old -> new`` for each setting that differs, in the file's order."""
    changes = []
    for section in ("deployment", "scheduler", "policy", "loop", "metrics", "backend"):
        before, after = getattr(old, section), getattr(new, section)
        if before == after:
            continue
        if section in ("policy", "loop", "backend") and before is not None:
            for key, value in vars(after).items():
                if getattr(before, key) != value:
                    changes.append(
                        f"{section}.{key}: {_shown(getattr(before, key))} -> {_shown(value)}"
                    )
        else:
            changes.append(f"{section}: {_shown(before)} -> {_shown(after)}")
    return changes


def _shown(value: object) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_shown(v)}" for k, v in value.items()) + "}"
    return repr(value) if isinstance(value, str) else str(value)


class SchedulerCallError(Exception):
    """A scheduler call made while acting failed (told apart from the backend's in metrics)."""


async def _asking_scheduler(call: Awaitable[T]) -> T:
    try:
        return await call
    except Exception as error:
        raise SchedulerCallError(repr(error)) from error


@dataclass(frozen=True)
class TickResult:
    """What one tick saw and did (``observation`` is ``None`` when observing failed)."""

    decision: Decision
    observation: Observation | None
    ok: bool
    record: DecisionRecord | None = None
    """The decision as the simulator records it (``None`` when the tick could not decide)."""


class Scaler:
    """Joins a :class:`~dask_deploy.observe.SchedulerLink`, a policy and a backend.

    Example (inside a running event loop)::

        scaler = Scaler(
            scheduler=connect(SchedulerSettings(address="tcp://127.0.0.1:8786")),
            backend=FakeBackend("dask"),
            policy=load_policy_factory("adaptive")(PolicySettings(maximum=4)),
            policy_name="adaptive",
            bounds=Bounds(minimum=0, maximum=4),
            settings=LoopSettings(interval=1.0),
        )
        await scaler.run(stop)  # until the asyncio.Event ``stop`` is set
    """

    def __init__(
        self,
        *,
        scheduler: SchedulerLink,
        backend: Backend,
        policy: Policy,
        policy_name: str,
        bounds: Bounds,
        settings: LoopSettings,
        metrics: ScalerMetrics | None = None,
        clock: Callable[[], float] = time.time,
        dry_run: bool = False,
    ) -> None:
        self.scheduler = scheduler
        self.backend = backend
        self.policy = policy
        self.policy_name = policy_name
        self.bounds = bounds
        self.settings = settings
        self.metrics = metrics or ScalerMetrics()
        self.clock = clock
        self.dry_run = dry_run
        self.failures = 0
        self._failing_since: float | None = None
        self._last_hold = ""
        self._unknown_logged: set[str] = set()
        self._last_line = ""
        self._memory: LoopMemory | None = None
        self._stuck: dict[str, str] = {}
        self._waiting: dict[str, str] = {}
        self._leaving_since: dict[str, float] = {}
        self._handed_over_alone: set[str] = set()
        self._cleaned: set[str] = set()
        self.metrics_url: str | None = None
        """Where the Prometheus endpoint listens, once it does (published with the status)."""
        self.config_source: ConfigSource | None = None
        """Set by ``dask-deploy scale --config``: the file is read again when it changes."""

    def adopt_policy(self, config: PolicyConfig, policy: Policy) -> None:
        """Decide with ``policy`` (built from ``config``) from now on, within its bounds."""
        self.policy = policy
        self.policy_name = config.name
        self.bounds = Bounds(config.minimum, config.maximum)
        self.metrics.set_bounds(config.minimum, config.maximum)

    async def reload_if_changed(self) -> None:
        """Apply a changed configuration file or worker template, as a restart would read it.

        Checked every tick (a ``stat`` of each file; their content is hashed only when that
        changed). The new file goes through the same validation as at startup; a file that
        does not pass is reported in one line and the running configuration stays. What only
        a restart can change (the deployment, the scheduler, the metrics socket, the backend's
        kind) is named and kept.
        """
        source = self.config_source
        if source is None or not source.changed():
            return
        old = source.config
        try:
            new = load_config(source.path, source.overrides)
            kept = [
                change
                for change in config_changes(old, new)
                if change.split(":")[0].split(".")[0] in RESTART_ONLY
                or change.startswith("backend.name:")
            ]
            effective = replace(
                new, deployment=old.deployment, scheduler=old.scheduler, metrics=old.metrics
            )
            if new.backend.name != old.backend.name:
                effective = replace(effective, backend=old.backend)
            policy_changed = (effective.policy, effective.loop.startup_timeout) != (
                old.policy,
                old.loop.startup_timeout,
            )
            policy = (
                build_policy(effective.policy, effective.loop.startup_timeout)
                if policy_changed
                else None
            )
            source.adopt(effective)
            templates = source.backend_files_digest()
            backend_changed = effective.backend != old.backend or templates != source.backend_digest
            backend = build_backend(effective, source.address) if backend_changed else None
        except Exception as error:
            source.config = old
            logger.error(
                "%s changed but is not applied: %s; the running configuration stays",
                source.path,
                " ".join(str(error).split()),
            )
            return
        changes = config_changes(old, effective)
        if backend_changed and effective.backend == old.backend:
            changes.append("a file backend.options names changed (worker template or script)")
        if kept:
            logger.warning(
                "%s: not applied until the scaler restarts: %s", source.path, "; ".join(kept)
            )
        if not changes:
            logger.info("%s changed; nothing in effect differs", source.path)
            return
        self.settings = effective.loop
        if policy is not None:
            self.adopt_policy(effective.policy, policy)
        if backend is not None:
            retired, self.backend = self.backend, backend
            source.backend_digest = templates
            await retired.close()
        logger.info("configuration changed (%s): %s", source.path, "; ".join(changes))

    async def observe(self) -> Observation | Hold:
        """This tick's observation, or a hold explaining what could not be observed.

        The scheduler is asked first: reaching a scheduler that has just restarted can take
        a while, and the instances listed after it are then current, not from before the wait.
        """
        try:
            state = await self.scheduler.observe(self.policy.target_duration)
        except Exception as error:
            self.metrics.scheduler_errors.inc()
            return Hold(f"scheduler unreachable, not scaling: {error!r}")
        try:
            instances = tuple(await self.backend.instances())
        except Exception as error:
            self.metrics.backend_errors.inc()
            return Hold(f"backend unavailable: {error!r}")
        return Observation(
            workers=state.workers,
            instances=instances,
            adaptive_target=state.adaptive_target,
            tasks_processing=state.tasks_processing,
            tasks_queued=state.tasks_queued,
            tasks_unrunnable=state.tasks_unrunnable,
            workers_to_close=state.workers_to_close,
            work_seconds=state.work_seconds,
        )

    async def _remove(self, names: list[str]) -> None:
        """Remove instances from the backend; an ended one is then not removed again."""
        await self.backend.scale_down(names)
        self._cleaned.update(names)

    async def _remove_ended(self, observation: Observation) -> Observation:
        """Remove the instances that ended by themselves, on the tick they are seen ended.

        An ended pod, an exited container or a finished process holds no worker and nothing
        collects it, so it would otherwise stay until the next scale action. Only instances
        whose worker is not connected are taken, and not those a batch backend reports ended
        early because they near their walltime (the walltime handover retires those). A
        failure is logged and retried next tick; it does not hold the decision.
        """
        present = {i.name for i in observation.instances}
        self._cleaned &= present
        if self.dry_run:
            return observation
        leaving = self.backend.leaving() if isinstance(self.backend, HandsOverAtWalltime) else {}
        ended = sorted(
            i.name
            for i in observation.instances
            if i.state is InstanceState.EXITED
            and i.name not in observation.registered_names
            and i.name not in leaving
            and i.name not in self._cleaned
        )
        if not ended:
            return observation
        try:
            await self._remove(ended)
        except Exception as error:
            self.metrics.backend_errors.inc()
            logger.warning("removing ended %s failed, will retry: %r", ", ".join(ended), error)
            return observation
        logger.info("removed ended %s (their worker had already gone)", ", ".join(ended))
        return steps.without_instances(observation, ended)

    async def _replace_stale(self, observation: Observation, now: float) -> Observation:
        """Remove instances that stayed unconnected for longer than the startup timeout.

        A job waiting in a batch queue (Resources, Priority, ...) is waiting for the batch
        system, not failing to start: cancelling it would only lose its place, so it is never
        timed out, and its reason is logged.
        """
        memory = self._memory or LoopMemory(started_at=now)
        timeout = self.settings.startup_timeout
        self._log_queue_waits(observation)
        self._memory, stale = steps.find_stale(memory, observation, now, timeout)
        if not stale or self.dry_run:
            return observation
        names = sorted(i.name for i in stale)
        logger.warning(
            "removing %s: not connected for %.0fs (startup_timeout=%gs); they will be replaced",
            ", ".join(names),
            now - max(steps.unconnected_since(self._memory, i) for i in stale),
            timeout,
        )
        await self._remove(names)
        return steps.without_instances(observation, names)

    def _log_queue_waits(self, observation: Observation) -> None:
        """Log each new reason a pending instance waits in the queue for (``Instance.queued``)."""
        waiting = {i.name: str(i.reason) for i in observation.pending if i.queued}
        for name, reason in sorted(waiting.items()):
            if self._waiting.get(name) != reason:
                logger.info(
                    "%s waits in the queue: %s (never cancelled for that; startup_timeout "
                    "counts from its start)",
                    name,
                    reason,
                )
        self._waiting = waiting

    async def _hand_over(self, observation: Observation, now: float) -> None:
        """Retire workers that leave at their walltime through the scheduler, in time.

        A leaving worker (its backend reports it within the replacement lead of its end) goes
        when a replacement requested since it began leaving has registered, when it is idle,
        or at the latest at the last safe moment its backend names, so its data moves to the
        others while there is time. The worker's own ``--lifetime`` is only a backstop.
        """
        if self.dry_run or not isinstance(self.backend, HandsOverAtWalltime):
            return
        due_at = self.backend.leaving()
        workers = {w.name: w for w in observation.workers if w.status != "closing_gracefully"}
        leaving = sorted((n for n in due_at if n in workers), key=lambda n: due_at[n])
        self._leaving_since = {n: self._leaving_since.get(n, now) for n in leaving}
        if not leaving:
            return
        # A replacement is submitted in the tick its predecessor starts leaving; batch systems
        # report submit times in whole seconds.
        since = min(self._leaving_since.values()) - 1
        replacements = sum(
            1 for i in observation.requested if i.name in workers and i.requested_at >= since
        )
        due: list[str] = []
        alone: list[str] = []
        uncovered: list[str] = []
        for rank, name in enumerate(leaving):
            # A refusal is asked again every tick: the walltime does not wait, and a replacement
            # that registers in the meantime gives the data somewhere to go.
            if rank < replacements:
                due.append(name)
            elif workers[name].idle or due_at[name] <= now:
                uncovered.append(name)
        if uncovered:
            # One without a replacement at a time: its data moves to the others (never to a
            # worker leaving in the same call), and its job's end frees room for a replacement
            # that the next one can hand over to.
            due.append(uncovered[0])
            if not workers[uncovered[0]].idle:
                alone.append(uncovered[0])
        if not due:
            return
        if set(alone) - self._handed_over_alone:
            logger.warning(
                "handing over %s without a replacement: its walltime is near and no "
                "replacement has registered (still in the queue?); its data moves to the others",
                ", ".join(alone),
            )
        elif not alone:
            logger.info("handing over %s before the walltime", ", ".join(due))
        self._handed_over_alone = (self._handed_over_alone & set(leaving)) | set(alone)
        retired = await _asking_scheduler(self.scheduler.retire(due))
        if retired:
            await self._remove(sorted(retired))

    def _log_stuck(self, observation: Observation) -> None:
        """Say once, per change, which instances cannot start and why (``Instance.reason``)."""
        stuck = {i.name: str(i.reason) for i in observation.pending if i.stuck}
        changed: dict[str, list[str]] = {}
        for name, reason in sorted(stuck.items()):
            if self._stuck.get(name) != reason:
                changed.setdefault(reason, []).append(name)
        for reason, names in changed.items():
            logger.warning(
                "cannot start %s: %s; not replacing them, and no more are asked for meanwhile",
                ", ".join(names),
                reason,
            )
        present = {i.name for i in observation.instances}
        released = sorted(n for n in self._stuck if n not in stuck and n in present)
        if released:
            logger.info("%s no longer held back; waiting for them to start", ", ".join(released))
        self._stuck = stuck
        self.metrics.stuck.set(len(stuck))

    def _log_unknown(self, observation: Observation) -> None:
        for worker in observation.unknown_workers:
            if worker.name not in self._unknown_logged:
                self._unknown_logged.add(worker.name)
                logger.info(
                    "worker %s (%s) was not launched by the backend: left alone",
                    worker.name,
                    worker.address,
                )

    def _log_decision(self, decision: Decision) -> None:
        line = describe(decision)
        if self.dry_run and line == self._last_line:
            logger.debug("%s", line)  # nothing acts in a dry run: say each decision once
            return
        self._last_line = line
        if isinstance(decision, Hold):
            if decision.reason == self._last_hold:
                logger.debug("%s", line)
                return
            self._last_hold = decision.reason
        else:
            self._last_hold = ""
        logger.info(
            "%s%s (policy %s)", "[dry-run] " if self.dry_run else "", line, self.policy_name
        )

    async def act(self, decision: Decision, observation: Observation) -> None:
        """Carry out a decision against the backend and the scheduler."""
        if self.dry_run or isinstance(decision, Hold):
            return
        if isinstance(decision, ScaleUp):
            await self.backend.scale_up(decision.n)
            return
        await self._scale_down(decision, observation)

    async def _scale_down(self, decision: ScaleDown, observation: Observation) -> None:
        registered = observation.registered_names
        to_cancel = [name for name in decision.names if name not in registered]
        to_retire = [name for name in decision.names if name in registered]
        if to_cancel:
            # A pending worker may have connected since the observation: retire those instead.
            connected_now = await _asking_scheduler(self.scheduler.worker_names())
            to_retire += [name for name in to_cancel if name in connected_now]
            to_cancel = [name for name in to_cancel if name not in connected_now]
        if to_cancel:
            logger.info("cancelling pending %s", ", ".join(to_cancel))
            await self._remove(to_cancel)
        if not to_retire:
            return
        retired = await _asking_scheduler(self.scheduler.retire(to_retire))
        kept = [name for name in to_retire if name not in retired]
        if self._memory is not None:
            self._memory = steps.remember_refused(self._memory, kept, self.clock())
        if kept:
            self.metrics.retire_failures.inc(len(kept))
            logger.warning(
                "scheduler did not retire %s (their data has nowhere to go or they are busy): "
                "left running",
                ", ".join(kept),
            )
        done = [name for name in to_retire if name in retired]
        if done:
            logger.info("retired %s; removing them from the backend", ", ".join(done))
            await self._remove(done)

    async def tick(self) -> TickResult:
        """One observe-decide-act round; never raises for scheduler or backend errors."""
        await self.reload_if_changed()
        now = self.clock()
        seen = await self.observe()
        if isinstance(seen, Hold):
            self._log_decision(seen)
            self.metrics.decisions.labels(kind=seen.kind).inc()
            return TickResult(seen, None, ok=False)
        seen = await self._remove_ended(seen)
        try:
            current = await self._replace_stale(seen, now)
        except Exception as error:
            self.metrics.backend_errors.inc()
            hold = Hold(f"backend error while replacing stale instances: {error!r}")
            self._log_decision(hold)
            return TickResult(hold, seen, ok=False)
        assert self._memory is not None  # set by _replace_stale
        self._log_unknown(steps.without_retiring(current))
        self._log_stuck(steps.without_retiring(current))
        step = steps.decide(self._memory, current, now, self.policy, self.bounds, self.policy_name)
        self._memory = step.memory
        observation, decision = step.observation, step.decision
        for note in step.notes:
            logger.warning("%s", note)
        self._log_decision(decision)
        self.metrics.record(
            decision,
            requested=len(observation.requested),
            observed=len(observation.observed),
            pending=len(observation.pending),
        )
        try:
            await self.act(decision, observation)
        except Exception as error:
            (
                self.metrics.scheduler_errors
                if isinstance(error, SchedulerCallError)
                else self.metrics.backend_errors
            ).inc()
            logger.warning("acting on %r failed, will retry: %r", describe(decision), error)
            return TickResult(decision, observation, ok=False, record=step.record)
        try:
            await self._hand_over(observation, now)
        except Exception as error:
            self.metrics.scheduler_errors.inc()
            logger.warning("handing over leaving workers failed, will retry: %r", error)
            return TickResult(decision, observation, ok=False, record=step.record)
        return TickResult(decision, observation, ok=True, record=step.record)

    def next_delay(self, ok: bool) -> float:
        """Seconds until the next tick: the interval, backing off only in a long outage.

        Level-triggered like Kubernetes' HPA: a failed tick is retried at the interval, so
        the count is right again within two intervals of a short outage ending. Only after
        ``PROMPT_RETRY_WINDOW`` seconds of consecutive failures does the wait grow (half the
        outage so far, at most ``MAX_BACKOFF``), sparing a resource manager that is down.
        """
        interval = self.settings.interval
        if ok:
            self.failures = 0
            self._failing_since = None
            return interval
        self.failures += 1
        now = self.clock()
        if self._failing_since is None:
            self._failing_since = now
        failing_for = now - self._failing_since
        if failing_for < PROMPT_RETRY_WINDOW:
            return interval
        return min(max(failing_for / 2, interval), max(MAX_BACKOFF, interval))

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set; then, with ``cleanup_on_exit``, remove every instance."""
        logger.info(
            "scaler started: policy=%s (minimum=%d maximum=%d) interval=%gs startup_timeout=%gs%s",
            self.policy_name,
            self.bounds.minimum,
            self.bounds.maximum,
            self.settings.interval,
            self.settings.startup_timeout,
            " (dry run: no action is taken)" if self.dry_run else "",
        )
        try:
            clock = asyncio.get_running_loop().time
            due = clock()
            while not stop.is_set():
                # Ticks are due every interval (a fixed rate, as the simulator models them):
                # the wait is what the tick left of it. Sleeping a whole interval after each
                # tick made the period the interval plus the tick's own time, 1.2 to 1.5 s on
                # a loaded machine, so the ticks drifted across the workload's arrivals. A
                # tick that overran still leaves the scheduler a tenth of an interval's rest.
                # A failed tick is retried its whole delay after it ended, as it always was:
                # a resource manager that answers slowly or not at all gets that much rest.
                ok = False
                try:
                    result = await self._tick_until(stop)
                    if result is None:
                        break
                    self.metrics.ticks.inc()
                    ok = result.ok
                    delay = self.next_delay(ok)
                except Exception:  # a bug must not take the sidecar down; say so loudly
                    logger.exception("unexpected error in the scaler loop")
                    self.metrics.ticks.inc()
                    delay = self.next_delay(False)
                rest = MIN_REST * self.settings.interval
                due = max(due + delay, clock() + rest) if ok else clock() + delay
                try:
                    await asyncio.wait_for(stop.wait(), due - clock())
                except TimeoutError:
                    pass
        finally:
            if self.settings.cleanup_on_exit and not self.dry_run:
                await self.cleanup()

    async def _tick_until(self, stop: asyncio.Event) -> TickResult | None:
        """One tick; when ``stop`` is set meanwhile, it gets a short grace, then is cancelled.

        Cancelling mid-tick is safe: the next scaler to run starts from what it observes.
        """
        tick = asyncio.create_task(self.tick())
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({tick, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not tick.done():
                await asyncio.wait({tick}, timeout=STOP_GRACE)
            if not tick.done():
                logger.info("stopping: abandoning the current tick")
                tick.cancel()
                await asyncio.gather(tick, return_exceptions=True)
                return None
            return tick.result()
        finally:
            stopped.cancel()

    async def cleanup(self) -> None:
        """Retire every worker of ours, then remove all our instances (``cleanup_on_exit``)."""
        try:
            instances = await self.backend.instances()
            names = sorted(i.name for i in instances)
            if not names:
                return
            logger.info("cleanup on exit: removing %s", ", ".join(names))
            try:
                retired = await self.scheduler.retire(names)
                logger.info("cleanup on exit: scheduler retired %d workers", len(retired))
            except Exception as error:
                logger.warning("cleanup on exit: could not retire through the scheduler: %r", error)
            await self.backend.scale_down(names)
        except Exception as error:
            logger.warning("cleanup on exit failed: %r", error)


def build_scaler(
    config: ScalerConfig,
    *,
    dry_run: bool = False,
    address: str | None = None,
    scaler_type: type[Scaler] = Scaler,
    **extra: Any,
) -> Scaler:
    """Policy, backend and scheduler link for ``config``; ``SettingsError`` on bad options.

    ``scaler_type`` (a subclass of :class:`Scaler`) is built with ``extra`` besides the loop's
    own arguments.
    """
    # The policy's and the backend's own checks come before connecting (bad options exit 2).
    policy = build_policy(config.policy, config.loop.startup_timeout)
    backend = build_backend(config, address or resolve_address(config.scheduler))
    return scaler_type(
        scheduler=connect(config.scheduler, address),
        backend=backend,
        policy=policy,
        settings=config.loop,
        policy_name=config.policy.name,
        bounds=Bounds(config.policy.minimum, config.policy.maximum),
        metrics=ScalerMetrics(),
        dry_run=dry_run,
        **extra,
    )


def build_policy(policy: PolicyConfig, startup_timeout: float) -> Policy:
    """The policy of a ``policy`` section; ``SettingsError`` on options it does not accept
    (a plug-in's published options schema first, then the policy's own checks)."""
    factory = load_policy_factory(policy.name)
    validate_plugin_options(factory, policy.options, prefix=POLICY_OPTIONS)
    return factory(
        PolicySettings(
            minimum=policy.minimum,
            maximum=policy.maximum,
            startup_timeout=startup_timeout,
            options=policy.options,
        )
    )


def build_backend(config: ScalerConfig, address: str) -> Backend:
    """The backend of ``config`` for the scheduler at ``address``; ``SettingsError`` on bad
    options."""
    factory = load_backend_factory(config.backend.name)
    validate_plugin_options(factory, config.backend.options, prefix=BACKEND_OPTIONS)
    return factory(
        BackendContext(
            deployment=config.deployment, scheduler_address=address, options=config.backend.options
        )
    )
