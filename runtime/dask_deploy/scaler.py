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
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from . import steps
from .backends import Backend, BackendContext, load_backend_factory
from .backends.batch import ReportsQueueWaits
from .config import LoopSettings, ScalerConfig
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
#: Seconds a tick in progress may still take once the scaler is asked to stop.
STOP_GRACE = 5.0


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
        self._waiting: dict[str, str] = {}

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
        )

    async def _replace_stale(self, observation: Observation, now: float) -> Observation:
        """Remove instances that stayed unconnected for longer than the startup timeout.

        A job waiting in the batch queue (Resources, Priority, ...) is waiting for the batch
        system, not failing to start: cancelling it would only lose its place, so it is never
        timed out, its reason is logged, and its clock starts when it leaves the queue.
        """
        memory = self._memory or LoopMemory(started_at=now)
        timeout = self.settings.startup_timeout
        waiting = self._queue_waits(observation)
        self._memory, stale = steps.find_stale(memory, observation, now, timeout, waiting=waiting)
        if not stale or self.dry_run:
            return observation
        names = sorted(i.name for i in stale)
        logger.warning(
            "removing %s: not connected for %.0fs (startup_timeout=%gs); they will be replaced",
            ", ".join(names),
            now - max(steps.unconnected_since(self._memory, i) for i in stale),
            timeout,
        )
        await self.backend.scale_down(names)
        return steps.without_instances(observation, names)

    def _queue_waits(self, observation: Observation) -> dict[str, str]:
        """Pending instances that wait in the backend's queue, and why; each new reason logged."""
        if not isinstance(self.backend, ReportsQueueWaits):
            return {}
        pending = {i.name for i in observation.pending}
        waiting = {n: r for n, r in self.backend.waiting().items() if n in pending}
        for name, reason in sorted(waiting.items()):
            if self._waiting.get(name) != reason:
                logger.info(
                    "%s waits in the queue: %s (never cancelled for that; startup_timeout "
                    "counts from its start)",
                    name,
                    reason,
                )
        self._waiting = waiting
        return waiting

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
            await self.backend.scale_down(to_cancel)
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
            await self.backend.scale_down(done)

    async def tick(self) -> TickResult:
        """One observe-decide-act round; never raises for scheduler or backend errors."""
        now = self.clock()
        seen = await self.observe()
        if isinstance(seen, Hold):
            self._log_decision(seen)
            self.metrics.decisions.labels(kind=seen.kind).inc()
            return TickResult(seen, None, ok=False)
        try:
            current = await self._replace_stale(seen, now)
        except Exception as error:
            self.metrics.backend_errors.inc()
            hold = Hold(f"backend error while replacing stale instances: {error!r}")
            self._log_decision(hold)
            return TickResult(hold, seen, ok=False)
        assert self._memory is not None  # set by _replace_stale
        self._log_unknown(steps.without_retiring(current))
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
            while not stop.is_set():
                try:
                    result = await self._tick_until(stop)
                    if result is None:
                        break
                    self.metrics.ticks.inc()
                    delay = self.next_delay(result.ok)
                except Exception:  # a bug must not take the sidecar down; say so loudly
                    logger.exception("unexpected error in the scaler loop")
                    self.metrics.ticks.inc()
                    delay = self.next_delay(False)
                try:
                    await asyncio.wait_for(stop.wait(), delay)
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
    config: ScalerConfig, *, dry_run: bool = False, address: str | None = None
) -> Scaler:
    """Policy, backend and scheduler link for ``config``; ``SettingsError`` on bad options."""
    policy_factory = load_policy_factory(config.policy.name)
    backend_factory = load_backend_factory(config.backend.name)
    validate_plugin_options(policy_factory, config.policy.options, prefix=POLICY_OPTIONS)
    validate_plugin_options(backend_factory, config.backend.options, prefix=BACKEND_OPTIONS)
    policy = policy_factory(
        PolicySettings(
            minimum=config.policy.minimum,
            maximum=config.policy.maximum,
            startup_timeout=config.loop.startup_timeout,
            options=config.policy.options,
        )
    )
    backend = backend_factory(
        BackendContext(
            deployment=config.deployment,
            scheduler_address=address or resolve_address(config.scheduler),
            options=config.backend.options,
        )
    )
    return Scaler(
        scheduler=connect(config.scheduler, address),
        backend=backend,
        policy=policy,
        settings=config.loop,
        policy_name=config.policy.name,
        bounds=Bounds(config.policy.minimum, config.policy.maximum),
        metrics=ScalerMetrics(),
        dry_run=dry_run,
    )
