"""Workload traces shared by the simulator and the real benchmark harness.

A trace is a list of task groups submitted at fixed offsets. Every task sleeps for
its duration (so many workers fit on few cores) and returns ``output_bytes`` bytes.
Per-task durations are drawn from a seeded generator, so the simulator and the real
harness run exactly the same tasks. Traces are stored as JSON files (``bench/traces``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .._errors import UserInputError

_GROUP_KEYS = {
    "name",
    "burst",
    "submit_at",
    "count",
    "duration",
    "jitter",
    "output_bytes",
    "depends_on",
    "hold",
}


@dataclass(frozen=True)
class TaskGroup:
    """``count`` tasks of one kind, submitted together at ``submit_at`` seconds."""

    name: str
    burst: str
    """Groups with the same burst label are measured together (makespan per burst)."""
    submit_at: float
    count: int
    duration: float
    """Mean task duration in seconds."""
    jitter: float
    """Each duration is ``duration * uniform(1 - jitter, 1 + jitter)``."""
    output_bytes: int
    depends_on: str | None
    """Task ``i`` takes task ``i % parent.count`` of this group as its input."""
    hold: bool
    """The client keeps the results until the trace ends (they stay in memory)."""


@dataclass(frozen=True)
class Trace:
    """A seeded workload."""

    name: str
    description: str
    seed: int
    groups: tuple[TaskGroup, ...]

    def group(self, name: str) -> TaskGroup:
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(name)

    def durations(self, group: TaskGroup) -> list[float]:
        """The per-task durations of ``group``, identical on every call."""
        index = self.groups.index(group)
        rng = random.Random(self.seed * 1_000_003 + index)
        low, high = 1.0 - group.jitter, 1.0 + group.jitter
        if group.jitter == 0:
            return [group.duration] * group.count
        return [group.duration * rng.uniform(low, high) for _ in range(group.count)]

    @property
    def bursts(self) -> list[str]:
        """Burst labels in submission order."""
        seen: dict[str, float] = {}
        for group in self.groups:
            seen.setdefault(group.burst, group.submit_at)
        return sorted(seen, key=lambda b: seen[b])

    @property
    def task_count(self) -> int:
        return sum(group.count for group in self.groups)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "description": self.description,
            "seed": self.seed,
            "groups": [
                {
                    "name": g.name,
                    "burst": g.burst,
                    "submit_at": g.submit_at,
                    "count": g.count,
                    "duration": g.duration,
                    "jitter": g.jitter,
                    "output_bytes": g.output_bytes,
                    "depends_on": g.depends_on,
                    "hold": g.hold,
                }
                for g in self.groups
            ],
        }


def _require(mapping: Mapping[str, object], key: str, kind: type, where: str) -> object:
    value = mapping.get(key)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise UserInputError(f"{where}.{key}: {value!r} is not a {kind.__name__}")
    return value


def parse_trace(data: object, source: str = "trace") -> Trace:
    """Validate a decoded trace file; raise :class:`UserInputError` naming the bad key."""
    if not isinstance(data, dict):
        raise UserInputError(f"{source}: expected a mapping with name, seed and groups")
    raw_groups = data.get("groups")
    if not isinstance(raw_groups, list) or not raw_groups:
        raise UserInputError(f"{source}.groups: {raw_groups!r} is not a non-empty list")
    groups: list[TaskGroup] = []
    names: set[str] = set()
    for index, raw in enumerate(raw_groups):
        where = f"{source}.groups[{index}]"
        if not isinstance(raw, dict):
            raise UserInputError(f"{where}: {raw!r} is not a mapping")
        unknown = set(raw) - _GROUP_KEYS
        if unknown:
            raise UserInputError(
                f"{where}.{sorted(unknown)[0]}: unknown key; allowed: {sorted(_GROUP_KEYS)}"
            )
        name = str(_require(raw, "name", str, where))
        depends_on = raw.get("depends_on")
        if depends_on is not None and depends_on not in names:
            raise UserInputError(
                f"{where}.depends_on: {depends_on!r} is not an earlier group; "
                f"allowed: {sorted(names)}"
            )
        count = int(_require(raw, "count", int, where))  # type: ignore[call-overload]
        duration = float(_require(raw, "duration", float, where))  # type: ignore[arg-type]
        if count < 1 or duration < 0:
            raise UserInputError(f"{where}: count must be >= 1 and duration >= 0")
        group = TaskGroup(
            name=name,
            burst=str(raw.get("burst", name)),
            submit_at=float(_require(raw, "submit_at", float, where)),  # type: ignore[arg-type]
            count=count,
            duration=duration,
            jitter=float(raw.get("jitter", 0.0)),
            output_bytes=int(raw.get("output_bytes", 8)),
            depends_on=str(depends_on) if depends_on is not None else None,
            hold=bool(raw.get("hold", False)),
        )
        if not 0 <= group.jitter < 1:
            raise UserInputError(f"{where}.jitter: {group.jitter!r}; allowed: 0 <= jitter < 1")
        names.add(name)
        groups.append(group)
    return Trace(
        name=str(data.get("name", source)),
        description=str(data.get("description", "")),
        seed=int(data.get("seed", 0)),
        groups=tuple(sorted(groups, key=lambda g: g.submit_at)),
    )


def load_trace(path: str | Path) -> Trace:
    """Read a trace file (JSON)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserInputError(f"--trace: {str(path)!r} does not exist") from None
    except json.JSONDecodeError as error:
        raise UserInputError(f"--trace: {str(path)!r} is not valid JSON: {error}") from None
    return parse_trace(data, source=path.stem)


def save_trace(trace: Trace, path: str | Path) -> None:
    Path(path).write_text(json.dumps(trace.to_json(), indent=2) + "\n")


@dataclass(frozen=True)
class IdealBounds:
    """What no policy can beat, given the maximum and the threads per worker."""

    makespan: float
    burst_makespan: Mapping[str, float]
    worker_seconds: float
    first_worker_after_burst: float
    """A new worker cannot register sooner than the boot delay."""


def ideal_bounds(
    trace: Trace, maximum: int, threads: int, boot_delay: float, idle_threads: int = 0
) -> IdealBounds:
    """Lower bounds: perfect packing on ``maximum`` warm workers, and no idle thread."""
    slots = max(1, maximum * threads)
    finish: dict[str, float] = {}
    burst_end: dict[str, float] = {}
    burst_start: dict[str, float] = {}
    work = 0.0
    for group in trace.groups:
        durations = trace.durations(group)
        total = sum(durations)
        work += total
        start = group.submit_at
        if group.depends_on is not None:
            start = max(start, finish[group.depends_on])
        end = start + max(max(durations), total / slots)
        finish[group.name] = end
        burst_start.setdefault(group.burst, group.submit_at)
        burst_end[group.burst] = max(burst_end.get(group.burst, 0.0), end)
    return IdealBounds(
        makespan=max(finish.values()),
        burst_makespan={b: burst_end[b] - burst_start[b] for b in burst_end},
        worker_seconds=work / threads,
        first_worker_after_burst=boot_delay,
    )


def trace_names(directory: Path) -> Sequence[str]:
    return sorted(p.stem for p in directory.glob("*.json"))
