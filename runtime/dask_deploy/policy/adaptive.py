"""The default policy: the scheduler's ``adaptive_target``, made safe to follow and boot-aware.

Capacity asked for now arrives one boot B later (request to registration: observed by the
policy, the median of the last eight; the ``boot_time`` option until one is seen). So:

- **Boot-aware scale-up.** With the known work (``Observation.work_seconds``: queued and
  processing task time from the scheduler's own duration estimates; the preload reports it),
  the policy estimates when the workers there and those booting finish it. It asks for
  workers only if that is later than a new worker could register and help (B plus a quarter
  of B), and then for the scheduler's whole count at once. Pending instances that would
  register after the work is done, or find fewer tasks than threads, are cancelled at once.
- **Learned keep-alive and pre-warming** (:mod:`dask_deploy.policy.keepalive`, after the
  hybrid histogram policy of Shahrad et al., ATC 2020): the deployment's idle gaps (no work
  beyond the minimum, until work arrives again) are remembered, and the cheapest plan on
  them is followed: keep idle workers through gaps shorter than about a boot, release them
  right after the work when gaps are long, and where gaps are regular, release and request
  again one boot before the predicted arrival. Workers kept or pre-warmed are only those the
  recent busy periods' work needs to finish within a boot.
- **Ski-rental fallback.** With fewer than two gaps, or when no learned plan is cheaper on
  the history, idle workers stay for the stabilization window of 2 B: keeping an idle worker
  costs one worker-second per second, while releasing one that is needed again costs its
  replacement's boot twice over (B worker-seconds booting, B seconds without its capacity);
  waiting out that price costs at most twice what a clairvoyant policy pays.

Options (``policy.options`` in ``scaler.yaml``):

``boot_time`` (default: none, seconds >= 0)
    The deployment's typical boot time, used until a boot has been observed (a first burst
    then knows whether a new worker could help). Without it and without known work the
    first burst scales up as the scheduler asks.
``growth_factor`` (default 2.0, > 1)
    Scale up by at most this factor per decision when the work is not known...
``growth_floor`` (default 4, >= 1)
    ...but always by at least this many instances, so that 0 -> N works.
``scale_down_window`` (default 60, seconds >= 0)
    Caps the ski-rental window, and is the window until a boot time is known (for example
    right after the scaler restarted with every worker registered).
``scale_down_window_min`` (default 5, seconds >= 0, at most ``scale_down_window``)
    The shortest ski-rental window, and how long a dip of the target is held while work
    remains without a learned plan. Set it equal to ``scale_down_window`` for a fixed window.
``memory_threshold`` (default 0.5, in (0, 1])
    Ask for enough workers that stored bytes stay below this share of memory limits.
``target_duration`` (default: the scheduler's ``distributed.adaptive.target-duration``)
    Seconds the scheduler's ``adaptive_target`` aims to finish the known work in.

Improvements over ``distributed.deploy.Adaptive``: boot-aware sizing and cancellation, a
learned keep-alive instead of a bare wait count, pending protection (never scale below
what an up-decision younger than the startup timeout asked for while its instances are
still pending and have work to do), only idle workers are released, and the scheduler's
retirement result is respected by the loop.

The policy stays pure: boot times come from the instances' ``requested_at`` and the
``now`` of the ticks at which each instance was last seen pending and first seen
registered, gaps from the ticks' ``now``; it reads no clock.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

from .._errors import SettingsError
from ..contract import Decision, Hold, Observation, PolicySettings, ScaleDown, ScaleUp
from ..options import POLICY_OPTIONS, integer, number, reject_unknown
from .keepalive import GapHistory, KeepAlivePlan, choose_plan
from .select import choose_release

OPTIONS = frozenset(
    {
        "boot_time",
        "growth_factor",
        "growth_floor",
        "memory_threshold",
        "scale_down_window",
        "scale_down_window_min",
        "target_duration",
    }
)
BOOT_WINDOW_FACTOR = 2.0
"""The window is this many observed boot times (see the module docstring)."""
USEFUL_SHARE = 0.25
USEFUL_TICKS = 2
"""A worker is requested only if the known work outlasts its boot by this share of the boot
(and this many ticks): one that registers for the last moments of a burst costs a boot and
saves nothing."""
BUSY_TICKS = 2
"""With a learned plan, a dip of the target while work remains is held this many ticks."""
BOOT_SAMPLES = 8
"""Boot times remembered; the window follows their median."""


@dataclass(frozen=True)
class AdaptiveOptions:
    """Validated options of the adaptive policy."""

    growth_factor: float = 2.0
    growth_floor: int = 4
    scale_down_window: float = 60.0
    scale_down_window_min: float = 5.0
    memory_threshold: float = 0.5
    target_duration: float | None = None
    boot_time: float | None = None


@dataclass(frozen=True)
class UpDecision:
    """When the last scale-up happened and the count it asked for."""

    at: float
    n: int


class BootClock:
    """Boot times (request -> registration) of the instances seen booting, from ticks alone.

    An instance seen pending at one tick and registered at the next registered somewhere
    in between: its boot time is taken at the midpoint, off by at most half an interval.
    One requested and registered between two ticks is taken at half its age.
    Instances already registered when the policy first looks, and workers that
    reconnect, are not samples.
    """

    def __init__(self) -> None:
        self._pending: dict[str, float] = {}
        """Pending instance -> ``now`` of the last tick that saw it pending."""
        self._seen_registered: set[str] = set()
        """Live instances that have been registered at some tick."""
        self._last_tick: float | None = None
        self._samples: deque[float] = deque(maxlen=BOOT_SAMPLES)

    @property
    def samples(self) -> tuple[float, ...]:
        """The remembered boot times, oldest first."""
        return tuple(self._samples)

    @property
    def estimate(self) -> float | None:
        """The median of the recent boot times; ``None`` before the first one."""
        return statistics.median(self._samples) if self._samples else None

    def observe(self, observation: Observation, now: float) -> None:
        """Note the instances that registered since the last tick."""
        registered = observation.registered_names
        for instance in observation.requested:
            name = instance.name
            if name in self._seen_registered or name not in registered:
                continue
            if name in self._pending:
                registered_at = (self._pending[name] + now) / 2
            elif self._last_tick is not None and instance.requested_at > self._last_tick:
                registered_at = (instance.requested_at + now) / 2
            else:
                continue
            self._samples.append(max(0.0, registered_at - instance.requested_at))
        self._pending = {instance.name: now for instance in observation.pending}
        live = {instance.name for instance in observation.requested}
        self._seen_registered = (self._seen_registered | registered) & live
        self._last_tick = now


class AdaptivePolicy:
    """See the module docstring. Keeps the window's targets, boot times, gaps and the last up."""

    def __init__(self, settings: PolicySettings, options: AdaptiveOptions) -> None:
        self.settings = settings
        self.options = options
        self._window: deque[tuple[float, int]] = deque()
        self.boots = BootClock()
        self.gaps = GapHistory()
        self.last_up: UpDecision | None = None
        self._plan: tuple[tuple[tuple[float, ...], float], KeepAlivePlan] | None = None
        self._last_tick: float | None = None
        self._interval: float | None = None
        """Seconds between the last two ticks (the loop's interval, seen from here)."""

    @property
    def target_duration(self) -> float | None:
        return self.options.target_duration

    @property
    def window(self) -> tuple[tuple[float, int], ...]:
        """``(time, target)`` pairs remembered (as far back as ``scale_down_window``)."""
        return tuple(self._window)

    @property
    def boot_time(self) -> float | None:
        """The boot time B the policy plans with: observed, else the ``boot_time`` option."""
        observed = self.boots.estimate
        return observed if observed is not None else self.options.boot_time

    @property
    def scale_down_window(self) -> float:
        """Seconds of the ski-rental window: twice the boot time, within bounds."""
        options = self.options
        boot = self.boot_time
        if boot is None:
            return options.scale_down_window
        return min(
            options.scale_down_window, max(options.scale_down_window_min, BOOT_WINDOW_FACTOR * boot)
        )

    @property
    def plan(self) -> KeepAlivePlan:
        """The keep-alive plan for the gaps seen so far (recomputed when they change)."""
        boot = self.boot_time
        window = self.scale_down_window
        if boot is None:
            return KeepAlivePlan(window, "ski rental")
        key = (self.gaps.gaps, boot)
        if self._plan is None or self._plan[0] != key:
            self._plan = (key, choose_plan(key[0], boot, window))
        return self._plan[1]

    def memory_target(self, observation: Observation) -> int:
        """Workers needed so that stored bytes stay under the threshold of their limits."""
        workers = observation.workers
        limits = [w.memory_limit for w in workers if w.memory_limit > 0]
        if not limits:
            return 0
        stored = sum(w.stored_bytes for w in workers)
        mean_limit = sum(limits) / len(limits)
        return math.ceil(stored / (self.options.memory_threshold * mean_limit))

    def decide(self, observation: Observation, now: float) -> Decision:
        settings, options = self.settings, self.options
        self.boots.observe(observation, now)
        if self._last_tick is not None and now > self._last_tick:
            self._interval = now - self._last_tick
        self._last_tick = now
        requested = len(observation.requested)
        pending = len(observation.pending)
        cpu = observation.adaptive_target
        memory = self.memory_target(observation)
        target = min(max(cpu, memory, settings.minimum), settings.maximum)
        # Busy: the work needs more than the minimum. The gaps that matter are those of the
        # workers above it (a trickle the minimum absorbs does not keep a burst's workers).
        busy = target > settings.minimum and has_work(observation)
        self.gaps.observe(busy, requested, observation.work_seconds, task_count(observation), now)

        self._window.append((now, target))
        while self._window and self._window[0][0] < now - options.scale_down_window:
            self._window.popleft()
        boot = self.boot_time
        plan = self.plan

        numbers: dict[str, float] = {
            "target": target,
            "scheduler_target": cpu,
            "memory_target": memory,
            "requested": requested,
            "observed": len(observation.observed),
            "pending": pending,
        }
        if observation.tasks_queued is not None:
            numbers["queued"] = observation.tasks_queued
        if observation.tasks_unrunnable is not None:
            numbers["unrunnable"] = observation.tasks_unrunnable
        if observation.work_seconds is not None:
            numbers["work_s"] = observation.work_seconds
        if boot is not None:
            numbers["boot_s"] = boot
        finish = known_work_finishes_in(observation, now, boot)
        if finish is not None:
            numbers["work_done_in_s"] = finish

        if target > requested:
            if finish is not None and boot is not None and memory <= cpu:
                useful_after = boot + max(USEFUL_SHARE * boot, USEFUL_TICKS * (self._interval or 0))
                if finish < useful_after and requested < settings.minimum:
                    # The minimum is kept whatever the work: an instance that ended (removed
                    # from outside, or failed) is replaced even when nothing waits for it.
                    self.last_up = UpDecision(now, settings.minimum)
                    return ScaleUp(
                        settings.minimum,
                        f"below the minimum of {settings.minimum} (more would not help the "
                        f"known work, done in {finish:.3g}s, within a {boot:.3g}s boot)",
                        numbers,
                    )
                if finish < useful_after:
                    return Hold(
                        f"scale-up held: the known work is done in {finish:.3g}s, before a "
                        f"worker requested now could register and help ({boot:.3g}s boot)",
                        numbers,
                    )
            cap = max(
                math.ceil(requested * options.growth_factor), requested + options.growth_floor
            )
            if finish is not None:
                # The known work outlasts a boot: the scheduler's count is sized from it, and
                # growing towards it tick by tick would only make the burst wait.
                cap = max(cap, target)
            n = min(target, cap)
            numbers["growth_cap"] = cap
            self.last_up = UpDecision(now, n)
            why = "memory use above threshold" if memory > cpu else "scheduler wants more workers"
            if n < target:
                why += f", growth capped at {cap}"
            return ScaleUp(n, why, numbers)

        prewarm = self._prewarm(plan, boot, busy, now, observation)
        if prewarm:
            numbers["prewarm"] = prewarm
            if requested < prewarm:
                self.last_up = UpDecision(now, prewarm)
                assert plan.prewarm_at is not None
                return ScaleUp(
                    prewarm,
                    f"pre-warming: work predicted {plan.prewarm_at:.3g}s after the last went "
                    f"(learned from {len(self.gaps.gaps)} idle gaps)",
                    numbers,
                )
        if target == requested:
            return Hold("at target", numbers)

        window = plan.keep if plan.learned else self.scale_down_window
        if busy:
            # While work remains, a dip of the target is not a gap: hold it a few ticks (as
            # Adaptive's wait count does), the floor of the ski-rental window without history.
            floor = min(options.scale_down_window_min, self.scale_down_window)
            if plan.learned and self._interval is not None:
                floor = min(floor, BUSY_TICKS * self._interval)
            window = max(window, floor)
        stabilized = max(t for at, t in self._window if at >= now - window)
        fixed_window = options.scale_down_window_min >= options.scale_down_window
        if not busy and boot is not None and self.gaps.work is not None and not fixed_window:
            # Kept through a gap (learned or the ski-rental window): only as many as the work
            # of the recent busy periods needs to finish within a boot (see warm_size). A
            # fixed window (scale_down_window_min = scale_down_window) is the user's own
            # promise to keep idle workers that long, so it is not trimmed.
            stabilized = min(stabilized, max(self.warm_size(observation, boot), prewarm))
        useless = self._pending_useless(observation, now, finish, prewarm) if pending else 0
        protected = 0
        if (
            self.last_up is not None
            and pending
            and now - self.last_up.at < settings.startup_timeout
            and not useless
        ):
            protected = self.last_up.n
        if useless:
            # The window keeps registered workers through a gap, not instances that would
            # register after the work is done: they are cancelled (pending go first, newest
            # first, and the newest register last).
            stabilized = min(stabilized, requested - useless)
            numbers["pending_too_late"] = useless
        keep = max(stabilized, protected, prewarm, settings.minimum)
        numbers["window_s"] = window
        numbers["window_max"] = stabilized
        numbers["protected"] = protected
        since = f"in the last {window:.3g}s ({self._window_source(plan, boot)})"
        if keep >= requested:
            if prewarm >= requested:
                return Hold("scale-down held: pre-warmed for the predicted work", numbers)
            if protected >= requested:
                return Hold("scale-down held: a recent scale-up is still pending", numbers)
            return Hold(f"scale-down held: highest target {since} is {stabilized}", numbers)
        names = choose_release(observation, requested - keep, idle_only=True)
        if not names:
            return Hold("scale-down held: no idle worker to release", numbers)
        numbers["keep"] = keep
        why = f"highest target {since} is {keep}, below the {requested} requested"
        return ScaleDown(names, why, numbers)

    def _prewarm(
        self,
        plan: KeepAlivePlan,
        boot: float | None,
        busy: bool,
        now: float,
        observation: Observation,
    ) -> int:
        """Workers to hold for the predicted arrival now (0 outside the pre-warm interval)."""
        idle_since = self.gaps.idle_since
        if busy or boot is None or plan.prewarm_at is None or idle_since is None:
            return 0
        assert plan.prewarm_until is not None
        # The last tick at or before ``prewarm_at - boot``: a tick later would be late.
        elapsed = now - idle_since + (self._interval or 0.0)
        if not plan.prewarm_at - boot <= elapsed <= plan.prewarm_until:
            return 0
        return self.warm_size(observation, boot)

    def warm_size(self, observation: Observation, boot: float) -> int:
        """Workers to have registered when the predicted work arrives.

        Enough to finish the work the recent busy periods brought within one boot: a
        scale-up on arrival could not bring a worker sooner, so these finish no later than
        reacting would, with fewer workers; never more than the recent peaks. Without known
        work, the recent peak itself.
        """
        peak = min(self.gaps.peak, self.settings.maximum)
        work = self.gaps.work
        if work is None or boot <= 0:
            return peak
        workers = observation.workers
        threads = sum(w.threads for w in workers) / len(workers) if workers else 1.0
        return min(peak, max(1, math.ceil(work / (boot * max(threads, 1.0)))))

    def _pending_useless(
        self, observation: Observation, now: float, finish: float | None, prewarm: int
    ) -> int:
        """How many pending instances would find no task: they register after the known work
        is done, or there are fewer tasks left than threads to run them.

        Unknown work (no preload) or an unknown boot time: none, they are kept as before.
        """
        boot = self.boot_time
        if prewarm or finish is None or boot is None:
            return 0
        late = sum(1 for i in observation.pending if i.requested_at + boot - now >= finish)
        tasks = task_count(observation)
        threads = sum(w.threads for w in observation.workers if w.status == "running")
        per_instance = threads / len(observation.workers) if observation.workers else 1.0
        spare = math.floor(max(0.0, tasks - threads) / max(per_instance, 1.0))
        surplus = max(0, len(observation.pending) - spare)
        return max(late, surplus)

    def _window_source(self, plan: KeepAlivePlan, boot: float | None) -> str:
        if plan.learned:
            return f"learned from {len(self.gaps.gaps)} idle gaps"
        options = self.options
        if boot is None:
            return "no boot observed yet"
        if BOOT_WINDOW_FACTOR * boot >= options.scale_down_window:
            return "scale_down_window"
        if BOOT_WINDOW_FACTOR * boot <= options.scale_down_window_min:
            return "scale_down_window_min"
        if self.boots.estimate is None:
            return f"{BOOT_WINDOW_FACTOR:g}x the boot_time option"
        return f"{BOOT_WINDOW_FACTOR:g}x the observed boot time"


def task_count(observation: Observation) -> int:
    """Tasks queued or processing: no more threads than this can be busy."""
    queued = (observation.tasks_queued or 0) + (observation.tasks_unrunnable or 0)
    return observation.tasks_processing + queued


def has_work(observation: Observation) -> bool:
    """Tasks are queued or processing (known work, when the scheduler reports it)."""
    if observation.work_seconds is not None and observation.work_seconds > 0:
        return True
    queued = (observation.tasks_queued or 0) + (observation.tasks_unrunnable or 0)
    return observation.tasks_processing > 0 or queued > 0


def known_work_finishes_in(
    observation: Observation, now: float, boot: float | None
) -> float | None:
    """Seconds until the known work is done on the workers there and those booting.

    A fluid estimate: the registered threads share the work, and each pending instance adds
    its threads when its boot is expected to end (``boot`` after its request, and no sooner
    than now). ``None`` when the scheduler does not report the work; infinite when no thread
    is there nor coming.
    """
    work = observation.work_seconds
    if work is None:
        return None
    if work <= 0:
        return 0.0
    threads = float(sum(w.threads for w in observation.workers if w.status == "running"))
    per_instance = threads / len(observation.workers) if observation.workers else 1.0
    arrivals = sorted(
        max(0.0, (i.requested_at + boot - now) if boot is not None else 0.0)
        for i in observation.pending
    )
    # No more threads can be busy than there are tasks (a few long tasks use a few workers).
    tasks = float(task_count(observation)) or math.inf
    elapsed = 0.0
    for arrival in arrivals:
        busy = min(threads, tasks)
        if busy > 0 and work <= busy * (arrival - elapsed):
            break
        work -= busy * (arrival - elapsed)
        elapsed = arrival
        threads += per_instance or 1.0
    busy = min(threads, tasks)
    if busy <= 0:
        return math.inf
    return elapsed + work / busy


def create(settings: PolicySettings) -> AdaptivePolicy:
    """The adaptive policy for these settings; raises ``SettingsError`` on bad options."""
    opts = settings.options
    reject_unknown(opts, OPTIONS, prefix=POLICY_OPTIONS)
    target_duration = opts.get("target_duration")
    window = number(opts, "scale_down_window", 60.0, prefix=POLICY_OPTIONS, at_least=0.0)
    window_min = number(
        opts, "scale_down_window_min", min(5.0, window), prefix=POLICY_OPTIONS, at_least=0.0
    )
    if window_min > window:
        raise SettingsError(
            f"{POLICY_OPTIONS}.scale_down_window_min",
            opts.get("scale_down_window_min"),
            f"a number of seconds between 0 and scale_down_window ({window:g})",
        )
    return AdaptivePolicy(
        settings,
        AdaptiveOptions(
            growth_factor=number(
                opts, "growth_factor", 2.0, prefix=POLICY_OPTIONS, at_least=1.0, above=True
            ),
            growth_floor=integer(opts, "growth_floor", 4, prefix=POLICY_OPTIONS, at_least=1),
            scale_down_window=window,
            scale_down_window_min=window_min,
            memory_threshold=number(
                opts,
                "memory_threshold",
                0.5,
                prefix=POLICY_OPTIONS,
                at_least=0.0,
                above=True,
                at_most=1.0,
            ),
            target_duration=None
            if target_duration is None
            else number(
                opts, "target_duration", 5.0, prefix=POLICY_OPTIONS, at_least=0.0, above=True
            ),
            boot_time=None
            if opts.get("boot_time") is None
            else number(opts, "boot_time", 0.0, prefix=POLICY_OPTIONS, at_least=0.0),
        ),
    )
