"""The default policy: the scheduler's ``adaptive_target``, made safe to follow.

Options (``policy.options`` in ``scaler.yaml``):

``growth_factor`` (default 2.0, > 1)
    Scale up by at most this factor per decision...
``growth_floor`` (default 4, >= 1)
    ...but always by at least this many instances, so that 0 -> N works.
``scale_down_window`` (default 60, seconds >= 0)
    The longest the policy waits before releasing workers it no longer needs. It scales
    down only to the highest target seen in a stabilization window (Kubernetes HPA's),
    and that window follows the *observed boot time* B of this deployment's workers
    (request to registration, the median of the last eight): it is 2 B. This is ski
    rental: keeping an idle worker costs one worker-second per second, while releasing
    one that is needed again costs its replacement's boot twice over (B worker-seconds
    booting, B seconds without its capacity); waiting out that price before releasing
    costs at most twice what a clairvoyant policy pays, whatever the gaps between
    bursts. A burst arriving soon after finds warm workers; a worker no burst needs is
    given back once waiting stops paying, instead of after a fixed minute.
    ``scale_down_window`` caps the window, and is the window until a first boot has been
    observed (for example right after the scaler restarted with every worker registered).
``scale_down_window_min`` (default 5, seconds >= 0, at most ``scale_down_window``)
    The shortest window, so a single low reading never releases a worker when workers
    boot fast. Set it equal to ``scale_down_window`` for a fixed window.
``memory_threshold`` (default 0.5, in (0, 1])
    Ask for enough workers that stored bytes stay below this share of memory limits.
``target_duration`` (default: the scheduler's ``distributed.adaptive.target-duration``)
    Seconds the scheduler's ``adaptive_target`` aims to finish the known work in.

Improvements over ``distributed.deploy.Adaptive``: bounded growth, a boot-aware
stabilization window instead of a bare wait count, pending protection (never scale below
what an up-decision younger than the startup timeout asked for while its instances are
still pending), only idle workers are released, and the scheduler's retirement result is
respected by the loop.

The policy stays pure: boot times come from the instances' ``requested_at`` and the
``now`` of the ticks at which each instance was last seen pending and first seen
registered; it reads no clock.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

from .._errors import SettingsError
from ..contract import Decision, Hold, Observation, PolicySettings, ScaleDown, ScaleUp
from ..options import POLICY_OPTIONS, integer, number, reject_unknown
from .select import choose_release

OPTIONS = frozenset(
    {
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
    """See the module docstring. Keeps the window's targets, boot times and the last up."""

    def __init__(self, settings: PolicySettings, options: AdaptiveOptions) -> None:
        self.settings = settings
        self.options = options
        self._window: deque[tuple[float, int]] = deque()
        self.boots = BootClock()
        self.last_up: UpDecision | None = None

    @property
    def target_duration(self) -> float | None:
        return self.options.target_duration

    @property
    def window(self) -> tuple[tuple[float, int], ...]:
        """``(time, target)`` pairs remembered (as far back as ``scale_down_window``)."""
        return tuple(self._window)

    @property
    def scale_down_window(self) -> float:
        """Seconds of the stabilization window now: twice the observed boot time, within bounds."""
        options = self.options
        boot = self.boots.estimate
        if boot is None:
            return options.scale_down_window
        return min(
            options.scale_down_window, max(options.scale_down_window_min, BOOT_WINDOW_FACTOR * boot)
        )

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
        requested = len(observation.requested)
        pending = len(observation.pending)
        cpu = observation.adaptive_target
        memory = self.memory_target(observation)
        target = min(max(cpu, memory, settings.minimum), settings.maximum)

        self._window.append((now, target))
        while self._window and self._window[0][0] < now - options.scale_down_window:
            self._window.popleft()
        window = self.scale_down_window
        boot = self.boots.estimate

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

        if target > requested:
            cap = max(
                math.ceil(requested * options.growth_factor), requested + options.growth_floor
            )
            n = min(target, cap)
            numbers["growth_cap"] = cap
            self.last_up = UpDecision(now, n)
            why = "memory use above threshold" if memory > cpu else "scheduler wants more workers"
            if n < target:
                why += f", growth capped at {cap}"
            return ScaleUp(n, why, numbers)
        if target == requested:
            return Hold("at target", numbers)

        stabilized = max(t for at, t in self._window if at >= now - window)
        protected = 0
        if (
            self.last_up is not None
            and pending
            and now - self.last_up.at < settings.startup_timeout
        ):
            protected = self.last_up.n
        keep = max(stabilized, protected, settings.minimum)
        numbers["window_s"] = window
        if boot is not None:
            numbers["boot_s"] = boot
        numbers["window_max"] = stabilized
        numbers["protected"] = protected
        since = f"in the last {window:.3g}s ({_window_source(boot, options)})"
        if keep >= requested:
            if protected >= requested:
                return Hold("scale-down held: a recent scale-up is still pending", numbers)
            return Hold(f"scale-down held: highest target {since} is {stabilized}", numbers)
        names = choose_release(observation, requested - keep, idle_only=True)
        if not names:
            return Hold("scale-down held: no idle worker to release", numbers)
        numbers["keep"] = keep
        why = f"highest target {since} is {keep}, below the {requested} requested"
        return ScaleDown(names, why, numbers)


def _window_source(boot: float | None, options: AdaptiveOptions) -> str:
    if boot is None:
        return "no boot observed yet"
    if BOOT_WINDOW_FACTOR * boot >= options.scale_down_window:
        return "scale_down_window"
    if BOOT_WINDOW_FACTOR * boot <= options.scale_down_window_min:
        return "scale_down_window_min"
    return f"{BOOT_WINDOW_FACTOR:g}x the observed boot time"


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
        ),
    )
