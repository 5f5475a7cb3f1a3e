"""Learned keep-alive and pre-warming: the hybrid histogram policy, for workers that boot.

Shahrad et al., "Serverless in the Wild" (USENIX ATC 2020), keep a histogram of each
application's idle times (the gap from the end of one invocation to the start of the next)
and, when it is representative, unload right after an invocation, load again at the
histogram's head (a low percentile, minus a margin) and keep loaded until its tail (a high
percentile, plus a margin); when it is not, they fall back to a standard keep-alive.

Here an "invocation" is a busy period of the deployment (tasks queued or processing) and
the idle gap is the time from "no work left" to "work arrives again". Loading is a worker
boot of B seconds, so pre-warming means *requesting* B before the predicted arrival. Rather
than fixed percentiles, every plan a short history suggests is priced on that history: the
expected worker-seconds an extra worker costs over one gap, plus the expected seconds the next
burst waits for it (``DELAY_WEIGHT`` worker-seconds each). The ski-rental window (keep idle
workers 2 B, then release) is one of the plans; when the history is shorter than
``MIN_GAPS`` or none of its plans beats that window, the window is what the policy uses
(the history has no pattern worth acting on).

Everything here is pure: the history is fed the policy's ticks and reads no clock.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

GAP_SAMPLES = 16
"""Idle gaps remembered (the most recent)."""
MIN_GAPS = 2
"""Fewer gaps than this is no history: the ski-rental window decides."""
PREWARM_MIN_GAPS = 4
"""Pre-warming bets on the next arrival's time: it needs more evidence than keeping a worker,
which only bets that the gap is short (with two gaps, any pair of values looks periodic)."""
MARGIN = 0.1
"""Head and tail margins of the hybrid histogram policy (Shahrad et al. use 10 %)."""
DELAY_WEIGHT = 0.1
"""Worker-seconds one second of a burst waiting for a worker is worth. Small: cost decides,
and waiting only breaks near-ties. Keeping a worker through a gap then pays when the gap is
shorter than 1.1 B, and pre-warming pays when it lands within 0.1 B of the arrival, which
costs about what releasing and booting again on arrival costs, without the wait."""
PEAK_SAMPLES = 5
"""Busy periods whose peak worker count sizes a pre-warm (their median)."""


@dataclass(frozen=True)
class KeepAlivePlan:
    """What to do with the workers above the minimum once the work is gone.

    Times are seconds since the deployment went idle. ``keep``: keep them that long, then
    release. With ``prewarm_at`` set, they are released after ``keep`` and requested again so
    that they register at ``prewarm_at`` (requested at ``prewarm_at - boot``), then kept
    until ``prewarm_until`` and released if no work came.
    """

    keep: float
    source: str
    """``history`` (learned from the gaps) or ``ski rental`` (the fallback window)."""
    prewarm_at: float | None = None
    prewarm_until: float | None = None
    cost: float = 0.0
    """Expected worker-seconds per extra worker per gap, delay priced in (for the log)."""

    @property
    def learned(self) -> bool:
        return self.source == "history"


def _keep_cost(gap: float, keep: float, boot: float) -> float:
    """Keep idle until ``keep``; a later arrival boots a new worker (paid and waited for)."""
    if gap <= keep:
        return gap
    return keep + boot + DELAY_WEIGHT * boot


def _prewarm_cost(gap: float, at: float, until: float, boot: float) -> float:
    """Release at once, request at ``at - boot``, keep the pre-warmed worker until ``until``."""
    request = at - boot
    if gap < request:  # before the pre-warm: boot on arrival
        return boot + DELAY_WEIGHT * boot
    if gap < at:  # arrives while the pre-warmed worker boots: wait for the rest
        return boot + DELAY_WEIGHT * (at - gap)
    if gap <= until:
        return boot + (gap - at)
    return boot + (until - at) + boot + DELAY_WEIGHT * boot


def choose_plan(gaps: tuple[float, ...], boot: float, ski_rental: float) -> KeepAlivePlan:
    """The cheapest plan on these gaps; the ski-rental window when the history says nothing.

    >>> plan = choose_plan((60.0, 61.0, 59.0, 60.0, 60.5), boot=10.0, ski_rental=20.0)
    >>> plan.source, plan.keep, round(plan.prewarm_at or 0, 1)
    ('history', 0.0, 53.1)
    >>> choose_plan((60.0, 61.0), boot=10.0, ski_rental=20.0).source
    'ski rental'
    """

    def mean_cost(cost: list[float]) -> float:
        return statistics.fmean(cost)

    fallback = KeepAlivePlan(
        ski_rental,
        "ski rental",
        cost=mean_cost([_keep_cost(g, ski_rental, boot) for g in gaps]) if gaps else 0.0,
    )
    if len(gaps) < MIN_GAPS:
        return fallback
    best: KeepAlivePlan | None = None
    keeps = {0.0, *(g * (1 + MARGIN) for g in gaps)}
    for keep in sorted(keeps):  # the shortest of equally cheap windows
        cost = mean_cost([_keep_cost(g, keep, boot) for g in gaps])
        if best is None or cost < best.cost:
            best = KeepAlivePlan(keep, "history", cost=cost)
    assert best is not None
    # A pre-warm requested within a boot of the release would be a reversal (released, then
    # asked for again before a replacement could even have booted): keep through instead.
    heads = sorted({h for g in gaps for h in (g, g * (1 - MARGIN)) if h >= 2 * boot})
    if len(gaps) < PREWARM_MIN_GAPS:
        heads = []
    tails = sorted({g * (1 + MARGIN) for g in gaps})
    for at in heads:
        for until in tails:
            if until < at:
                continue
            cost = mean_cost([_prewarm_cost(g, at, until, boot) for g in gaps])
            if cost < best.cost:
                best = KeepAlivePlan(0.0, "history", at, until, cost)
    # The window wins only if the history says it is cheaper: on a tie, what the history
    # showed is enough (the window would keep workers longer than any gap seen needed).
    return fallback if fallback.cost < best.cost else best


@dataclass
class _BusyWork:
    """The work one busy period brought: its largest task count, priced per task."""

    tasks: int = 0
    per_task: float | None = None
    """The per-task estimate (known work / tasks) of its last tick with half its tasks left."""

    @property
    def seconds(self) -> float | None:
        return None if self.per_task is None else self.tasks * self.per_task


class GapHistory:
    """Idle gaps and busy-period peaks of one deployment, from the policy's ticks.

    A busy period's work is its largest task count times the per-task estimate of its last
    tick with at least half that count, not the largest known work seen. At a burst's start
    the scheduler prices a new task prefix at 0.5 s, then at twice the longest run its
    workers' last heartbeats reported: between a tenth and twice the true duration, by where
    the tick fell. The largest known work was that first estimate, and the workers kept
    through a gap (``work / boot``) flipped between 1 and 2 from one real run to the next on
    the same trace; once tasks finish, the estimate is their measured mean.
    """

    def __init__(self) -> None:
        self._gaps: deque[float] = deque(maxlen=GAP_SAMPLES)
        self._peaks: deque[int] = deque(maxlen=PEAK_SAMPLES)
        self.idle_since: float | None = None
        """When the work was last seen gone; ``None`` while busy or before any work."""
        self._busy_seen = False
        self._peak = 0
        self._works: deque[_BusyWork] = deque(maxlen=PEAK_SAMPLES)

    @property
    def gaps(self) -> tuple[float, ...]:
        return tuple(self._gaps)

    @property
    def peak(self) -> int:
        """Workers a pre-warm asks for: the median peak of the recent busy periods."""
        return int(statistics.median_low(self._peaks)) if self._peaks else 0

    @property
    def work(self) -> float | None:
        """The known work a busy period brings (the median of the recent ones')."""
        works = [w.seconds for w in self._works if w.seconds is not None]
        return statistics.median(works) if works else None

    def observe(
        self, busy: bool, requested: int, work: float | None, tasks: int, now: float
    ) -> None:
        """Note this tick: is there work, how much is known (seconds, tasks), how many
        instances are requested."""
        if busy:
            if self.idle_since is not None:
                self._gaps.append(now - self.idle_since)
                self.idle_since = None
            if not self._busy_seen:
                self._busy_seen = True
                self._peak = 0
                self._works.append(_BusyWork())
            self._peak = max(self._peak, requested)
            busy_work = self._works[-1]
            busy_work.tasks = max(busy_work.tasks, tasks)
            if work is not None and tasks > 0 and 2 * tasks >= busy_work.tasks:
                # Priced while most of its tasks remain: a burst's last few tasks share the
                # queue with whatever else runs (a trickle of longer tasks, say).
                busy_work.per_task = work / tasks
        elif self._busy_seen:
            self._peaks.append(self._peak)
            self._busy_seen = False
            self.idle_since = now
