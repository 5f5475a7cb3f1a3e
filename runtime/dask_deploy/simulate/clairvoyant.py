"""A clairvoyant reference policy: reads the trace's future; not deployable.

It knows every task's true duration, when each task group will be submitted and the boot
delay of the model, so it can do what no real policy can: request workers exactly one boot
before a burst arrives, ask only for workers that will register while there is still work
for them, and release a worker the moment no work needs it within a boot. ``make bench``
compares the other policies against it: it is the physical limit, not a goal.

It is driven like any other policy, by :class:`~dask_deploy.simulate.PolicyDriver` and the
loop's own step functions, so the same invariants hold for it.
"""

from __future__ import annotations

import math

from ..contract import Decision, Hold, Observation, ScaleDown, ScaleUp
from ..policy.select import choose_release
from .engine import SimCluster
from .trace import Trace

TARGET_DURATION = 5.0
"""Seconds the reference sizes a burst to finish in: distributed's default target duration,
so it asks for what the scheduler's ``adaptive_target`` would, only at the right time."""
CLAIRVOYANT = "clairvoyant"
"""The simulator's name for it (``dask-deploy simulate --policy clairvoyant``)."""


class ClairvoyantPolicy:
    """The reference policy of the simulator (see the module docstring)."""

    def __init__(
        self, trace: Trace, cluster: SimCluster, *, minimum: int, maximum: int, interval: float
    ) -> None:
        self.trace = trace
        self.cluster = cluster
        self.minimum = minimum
        self.maximum = maximum
        self.interval = interval
        self.boot = cluster.settings.boot_delay * (1 + cluster.settings.boot_jitter)
        """The longest a boot can take in the model: requests go out this early."""
        self.threads = cluster.settings.threads

    @property
    def target_duration(self) -> float | None:
        return None

    def _now_wanted(self, observation: Observation) -> int:
        """Workers the submitted work needs: all it can use if it outlasts a boot."""
        count, seconds = self.cluster.outstanding()
        if count == 0:
            return 0
        busy = sum(1 for w in observation.workers if w.processing)
        threads = max(1, len(observation.workers)) * self.threads
        if seconds / threads > self.boot + self.interval:
            return min(self.maximum, -(-count // self.threads), self._sized(seconds))
        return busy

    def _sized(self, seconds: float) -> int:
        """As many workers as the scheduler's own rule asks for this much work (5 s target)."""
        return max(1, math.ceil(seconds / TARGET_DURATION / self.threads))

    def _future_wanted(self, now: float, *, in_time: bool) -> int:
        """Workers for the groups submitted within a boot (plus a tick) from now.

        ``in_time``: only groups that a worker requested now still meets on arrival (what is
        worth requesting); otherwise every group that close (what is worth keeping).
        """
        horizon = now + self.boot + self.interval
        earliest = now + self.boot - self.interval if in_time else now
        wanted = 0
        for group in self.trace.groups:
            if earliest < group.submit_at <= horizon and group.depends_on is None:
                work = sum(self.trace.durations(group))
                count = -(-group.count // self.threads)
                wanted = max(wanted, min(self.maximum, count, self._sized(work)))
        return wanted

    def decide(self, observation: Observation, now: float) -> Decision:
        requested = len(observation.requested)
        current = max(self._now_wanted(observation), self.minimum)
        target = max(current, self._future_wanted(now, in_time=True))
        keep = max(current, self._future_wanted(now, in_time=False))
        numbers = {"target": target, "keep": keep, "requested": requested}
        if target > requested:
            return ScaleUp(target, "clairvoyant: work there or arriving in a boot", numbers)
        if keep >= requested:
            return Hold("clairvoyant: at target", numbers)
        target = keep
        names = choose_release(observation, requested - target, idle_only=True)
        if not names:
            return Hold("clairvoyant: no idle worker to release", numbers)
        return ScaleDown(names, "clairvoyant: no work for them within a boot", numbers)
