"""Keep exactly N workers, whatever the load.

Options (``policy.options``): ``workers`` (integer; default ``policy.minimum``), which
must lie between ``policy.minimum`` and ``policy.maximum``. Above N it releases pending
instances first, then workers in the scheduler's ``workers_to_close`` order.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._errors import SettingsError
from ..contract import Decision, Hold, Observation, PolicySettings, ScaleDown, ScaleUp
from ..options import POLICY_OPTIONS, integer, reject_unknown
from .select import choose_release


@dataclass(frozen=True)
class FixedPolicy:
    """Always ``workers`` instances."""

    workers: int

    @property
    def target_duration(self) -> float | None:
        return None

    def decide(self, observation: Observation, now: float) -> Decision:
        requested = len(observation.requested)
        numbers = {
            "target": self.workers,
            "requested": requested,
            "observed": len(observation.observed),
            "pending": len(observation.pending),
        }
        if requested < self.workers:
            return ScaleUp(self.workers, f"fixed at {self.workers}", numbers)
        if requested == self.workers:
            return Hold(f"fixed at {self.workers}", numbers)
        names = choose_release(observation, requested - self.workers, idle_only=False)
        if not names:
            return Hold("above the fixed count but no worker can be released", numbers)
        return ScaleDown(names, f"fixed at {self.workers}", numbers)


def create(settings: PolicySettings) -> FixedPolicy:
    """The fixed policy; ``policy.options.workers`` defaults to ``policy.minimum``."""
    reject_unknown(settings.options, {"workers"}, prefix=POLICY_OPTIONS)
    workers = integer(
        settings.options, "workers", settings.minimum, prefix=POLICY_OPTIONS, at_least=0
    )
    if not settings.minimum <= workers <= settings.maximum:
        raise SettingsError(
            f"{POLICY_OPTIONS}.workers",
            workers,
            f"an integer between policy.minimum ({settings.minimum}) "
            f"and policy.maximum ({settings.maximum})",
        )
    return FixedPolicy(workers)
