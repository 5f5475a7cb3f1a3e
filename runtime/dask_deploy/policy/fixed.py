"""Keep exactly N workers, whatever the load.

Options (``policy.options``): ``workers`` (integer; default ``policy.minimum``), which
must lie between ``policy.minimum`` and ``policy.maximum``. Above N it releases pending
instances first, then workers in the scheduler's ``workers_to_close`` order.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._errors import SettingsError
from . import _options
from ._select import choose_release
from ._types import Decision, Hold, Observation, PolicySettings, ScaleDown, ScaleUp


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
    _options.reject_unknown(settings.options, {"workers"})
    workers = _options.integer(settings.options, "workers", settings.minimum, at_least=0)
    if not settings.minimum <= workers <= settings.maximum:
        raise SettingsError(
            "policy.options.workers",
            workers,
            f"an integer between policy.minimum ({settings.minimum}) "
            f"and policy.maximum ({settings.maximum})",
        )
    return FixedPolicy(workers)
