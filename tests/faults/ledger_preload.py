"""Scheduler preload of the fault suite: which worker took which result with it, what ran again.

Every result that leaves memory while a worker is removed is booked against that worker's
name (the resource manager's id), so a test can prove that results were lost only from
workers it SIGKILLed itself, never from workers the scaler removed.

Load it with ``dask scheduler --preload /abs/path/tests/faults/ledger_preload.py`` (a file
path: nothing under tests/ must be importable on the scheduler's side, which may be a
container or a SLURM job), or call :func:`dask_setup` on an in-process scheduler. Read it
over RPC, without pickling test code: ``await rpc(address).fault_ledger()`` or
``client.sync(client.scheduler.fault_ledger)``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from distributed import Scheduler
from distributed.diagnostics.plugin import SchedulerPlugin

PLUGIN_NAME = "fault-ledger"


class LossLedger(SchedulerPlugin):
    """Books results lost with a removed worker by its name, and counts computations per key."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.unattributed: dict[str, list[str]] = defaultdict(list)
        self.lost_from: dict[str, list[str]] = defaultdict(list)
        self.computed: Counter[str] = Counter()

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        self.names[worker] = str(scheduler.workers[worker].name)

    def transition(
        self, key: Any, start: str, finish: str, *args: Any, stimulus_id: str = "", **kw: Any
    ) -> None:
        if start == "processing" and finish == "memory":
            self.computed[str(key)] += 1
        elif start == "memory" and finish != "memory":
            # Scheduler.remove_worker transitions the lost keys first, then calls the
            # plugins' remove_worker with the same stimulus id: book them there.
            self.unattributed[stimulus_id].append(str(key))

    def remove_worker(
        self, scheduler: Scheduler, worker: str, *, stimulus_id: str, **kw: Any
    ) -> None:
        keys = self.unattributed.pop(stimulus_id, [])
        self.lost_from[self.names.get(worker, worker)].extend(keys)

    def report(self) -> dict[str, Any]:
        """``{"lost_from": {worker name: [keys]}, "computed": {key: times}}``."""
        return {"lost_from": dict(self.lost_from), "computed": dict(self.computed)}


def dask_setup(scheduler: Scheduler) -> None:
    """Install the ledger and its read-only RPC handler ``fault_ledger``."""
    ledger = LossLedger()
    scheduler.add_plugin(ledger, name=PLUGIN_NAME)

    def fault_ledger(**_: Any) -> dict[str, Any]:
        return ledger.report()

    scheduler.handlers["fault_ledger"] = fault_ledger
