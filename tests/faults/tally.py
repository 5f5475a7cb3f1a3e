"""The fault suite's tally: one record per injected fault, summed at the end of the run."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FaultRecord:
    """What one injected fault cost."""

    backend: str
    kind: str
    recovery_seconds: float
    seconds_outside_bounds: float
    keys_lost_from_retired_workers: int
    tasks_recomputed: int


@dataclass
class Tally:
    faults: list[FaultRecord] = field(default_factory=list)
    instances_left_behind: int = 0

    def lines(self) -> list[str]:
        kinds = Counter(f"{f.backend}/{f.kind}" for f in self.faults)
        worst = max(self.faults, key=lambda f: f.recovery_seconds)
        return [
            f"faults injected: {len(self.faults)} ("
            + ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items()))
            + ")",
            "keys lost from workers the scaler removed: "
            f"{sum(f.keys_lost_from_retired_workers for f in self.faults)}",
            f"tasks recomputed (after SIGKILLed workers): "
            f"{sum(f.tasks_recomputed for f in self.faults)}",
            f"instances left behind after teardown: {self.instances_left_behind}",
            "time outside [minimum, maximum]: "
            f"{sum(f.seconds_outside_bounds for f in self.faults):.1f}s",
            f"worst time to recover: {worst.recovery_seconds:.1f}s ({worst.backend}/{worst.kind})",
        ]


TALLY = Tally()
