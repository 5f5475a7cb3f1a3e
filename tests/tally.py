"""The fault suite's tally: one record per injected fault, summed at the end of the run.

Definitions, the same on every backend:

- *in bounds*: the resource manager's count of the deployment's live instances (requested,
  pending or running; not failed, finished or being deleted) lies within [minimum, maximum].
- *fault over*: the moment the injected fault has ended: a killed worker is seen gone by
  the resource manager, a failing API answers normally again, a restarted scaler or
  scheduler process is up.
- *ticks to bounds*: scaler loop iterations finished (``dask_deploy_ticks_total``) between
  the fault being over and the count being seen in bounds. Counting ticks, not seconds,
  makes "back within two intervals" a property of the loop rather than of the machine's
  load. 0 means the count never left the bounds.
- *recovery seconds*: from the fault being over until the deployment is back at its
  target with every running instance's worker connected (includes the worker's boot).
- *keys lost from removed workers*: client-held results lost with a worker that the test did
  not SIGKILL itself (so: a worker the scaler removed); the promise is zero.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

#: "Back within [minimum, maximum] within 2 intervals".
MAX_TICKS_TO_BOUNDS = 2


@dataclass(frozen=True)
class FaultRecord:
    """What one injected fault cost."""

    backend: str
    kind: str
    recovery_seconds: float
    seconds_outside_bounds: float
    keys_lost_from_retired_workers: int
    tasks_recomputed: int
    ticks_to_bounds: int = 0
    keys_lost: int = 0


@dataclass
class Tally:
    faults: list[FaultRecord] = field(default_factory=list)
    instances_left_behind: int = 0

    def lines(self) -> list[str]:
        kinds = Counter(f"{f.backend}/{f.kind}" for f in self.faults)
        backends = Counter(f.backend for f in self.faults)
        worst = max(self.faults, key=lambda f: f.recovery_seconds)
        slowest = max(self.faults, key=lambda f: f.ticks_to_bounds)
        return [
            f"faults injected: {len(self.faults)} ("
            + ", ".join(f"{k}: {n}" for k, n in sorted(backends.items()))
            + ")",
            "  by kind: " + ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items())),
            f"client-held keys lost (all causes): {sum(f.keys_lost for f in self.faults)}",
            "keys lost from workers the scaler removed: "
            f"{sum(f.keys_lost_from_retired_workers for f in self.faults)}",
            f"tasks recomputed (after SIGKILLed workers): "
            f"{sum(f.tasks_recomputed for f in self.faults)}",
            f"instances left behind after teardown: {self.instances_left_behind}",
            "time outside [minimum, maximum]: "
            f"{sum(f.seconds_outside_bounds for f in self.faults):.1f}s",
            f"most ticks to get back within bounds: {slowest.ticks_to_bounds} "
            f"(limit {MAX_TICKS_TO_BOUNDS}, plus one status interval where the backend polls "
            f"less often, or Marathon's launch delay after a killed task; "
            f"{slowest.backend}/{slowest.kind})",
            f"worst time to recover: {worst.recovery_seconds:.1f}s ({worst.backend}/{worst.kind})",
        ]


TALLY = Tally()
