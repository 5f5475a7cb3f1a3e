"""The default policy: the scheduler's ``adaptive_target``, made safe to follow.

Options (``policy.options`` in ``scaler.yaml``):

``growth_factor`` (default 2.0, > 1)
    Scale up by at most this factor per decision...
``growth_floor`` (default 4, >= 1)
    ...but always by at least this many instances, so that 0 -> N works.
``scale_down_window`` (default 60, seconds >= 0)
    Scale down only to the highest target seen in this window (Kubernetes HPA's
    stabilization window), so a dependent burst arriving soon after finds warm workers.
``memory_threshold`` (default 0.5, in (0, 1])
    Ask for enough workers that stored bytes stay below this share of memory limits.
``target_duration`` (default: the scheduler's ``distributed.adaptive.target-duration``)
    Seconds the scheduler's ``adaptive_target`` aims to finish the known work in.

Improvements over ``distributed.deploy.Adaptive``: bounded growth, a stabilization
window instead of a bare wait count, pending protection (never scale below what an
up-decision younger than the startup timeout asked for while its instances are still
pending), only idle workers are released, and the scheduler's retirement result is
respected by the loop.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from . import _options
from ._select import choose_release
from ._types import Decision, Hold, Observation, PolicySettings, ScaleDown, ScaleUp

OPTIONS = frozenset(
    {"growth_factor", "growth_floor", "memory_threshold", "scale_down_window", "target_duration"}
)


@dataclass(frozen=True)
class AdaptiveOptions:
    """Validated options of the adaptive policy."""

    growth_factor: float = 2.0
    growth_floor: int = 4
    scale_down_window: float = 60.0
    memory_threshold: float = 0.5
    target_duration: float | None = None


@dataclass(frozen=True)
class UpDecision:
    """When the last scale-up happened and the count it asked for."""

    at: float
    n: int


class AdaptivePolicy:
    """See the module docstring. Keeps the targets of the window and the last up-decision."""

    def __init__(self, settings: PolicySettings, options: AdaptiveOptions) -> None:
        self.settings = settings
        self.options = options
        self._window: deque[tuple[float, int]] = deque()
        self.last_up: UpDecision | None = None

    @property
    def target_duration(self) -> float | None:
        return self.options.target_duration

    @property
    def window(self) -> tuple[tuple[float, int], ...]:
        """``(time, target)`` pairs remembered for the stabilization window."""
        return tuple(self._window)

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
        requested = len(observation.requested)
        pending = len(observation.pending)
        cpu = observation.adaptive_target
        memory = self.memory_target(observation)
        target = min(max(cpu, memory, settings.minimum), settings.maximum)

        self._window.append((now, target))
        while self._window and self._window[0][0] < now - options.scale_down_window:
            self._window.popleft()

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

        stabilized = max(t for _, t in self._window)
        protected = 0
        if (
            self.last_up is not None
            and pending
            and now - self.last_up.at < settings.startup_timeout
        ):
            protected = self.last_up.n
        keep = max(stabilized, protected, settings.minimum)
        numbers["window_max"] = stabilized
        numbers["protected"] = protected
        if keep >= requested:
            if protected >= requested:
                return Hold("scale-down held: a recent scale-up is still pending", numbers)
            return Hold(
                f"scale-down held: highest target in the last "
                f"{options.scale_down_window:g}s is {stabilized}",
                numbers,
            )
        names = choose_release(observation, requested - keep, idle_only=True)
        if not names:
            return Hold("scale-down held: no idle worker to release", numbers)
        numbers["keep"] = keep
        why = (
            f"highest target in the last {options.scale_down_window:g}s is {keep}, "
            f"below the {requested} requested"
        )
        return ScaleDown(names, why, numbers)


def create(settings: PolicySettings) -> AdaptivePolicy:
    """The adaptive policy for these settings; raises ``SettingsError`` on bad options."""
    opts = settings.options
    _options.reject_unknown(opts, OPTIONS)
    target_duration = opts.get("target_duration")
    return AdaptivePolicy(
        settings,
        AdaptiveOptions(
            growth_factor=_options.number(opts, "growth_factor", 2.0, at_least=1.0, above=True),
            growth_floor=_options.integer(opts, "growth_floor", 4, at_least=1),
            scale_down_window=_options.number(opts, "scale_down_window", 60.0, at_least=0.0),
            memory_threshold=_options.number(
                opts, "memory_threshold", 0.5, at_least=0.0, above=True, at_most=1.0
            ),
            target_duration=None
            if target_duration is None
            else _options.number(opts, "target_duration", 5.0, at_least=0.0, above=True),
        ),
    )
