"""An in-memory scheduler link and a settable clock, for tests of the control loop."""

from __future__ import annotations

from collections.abc import Collection

from dask_deploy.observe import SchedulerState
from dask_deploy.policy import WorkerSnapshot


class FakeScheduler:
    """Workers connect when a test says so; retirement can refuse chosen names."""

    def __init__(self) -> None:
        self.connected: dict[str, WorkerSnapshot] = {}
        self.target = 0
        self.reachable = True
        self.refuse: set[str] = set()
        self.retire_calls: list[list[str]] = []

    def connect(self, name: str, *, processing: int = 0) -> None:
        self.connected[name] = WorkerSnapshot(name, f"tcp://{name}", "running", 1, 0, 0, processing)

    async def observe(self, target_duration: float | None) -> SchedulerState:
        if not self.reachable:
            raise ConnectionRefusedError("scheduler down")
        workers = tuple(self.connected.values())
        return SchedulerState(workers, self.target, 0, 0, 0, tuple(w.name for w in workers))

    async def worker_names(self) -> frozenset[str]:
        return frozenset(self.connected)

    async def retire(self, names: Collection[str]) -> frozenset[str]:
        self.retire_calls.append(sorted(names))
        retired = frozenset(n for n in names if n not in self.refuse and n in self.connected)
        for name in retired:
            del self.connected[name]
        return retired

    async def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
