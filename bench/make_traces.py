"""Write the benchmark traces to bench/traces/*.json (seeded; rerun to regenerate).

Every task sleeps, so a few cores host many workers. The traces are short on purpose:
`make bench` runs each of them under four policies, three times, in under 20 minutes
on a 2-core machine, with a 5 s worker boot delay.
"""

from __future__ import annotations

import random
from pathlib import Path

from dask_deploy.simulate.trace import TaskGroup, Trace, save_trace

HERE = Path(__file__).parent / "traces"


def group(
    name: str,
    at: float,
    count: int,
    duration: float,
    *,
    burst: str | None = None,
    jitter: float = 0.2,
    output_bytes: int = 8,
    depends_on: str | None = None,
    hold: bool = False,
) -> TaskGroup:
    return TaskGroup(
        name=name,
        burst=burst or name,
        submit_at=at,
        count=count,
        duration=duration,
        jitter=jitter,
        output_bytes=output_bytes,
        depends_on=depends_on,
        hold=hold,
    )


TRACES = [
    Trace(
        "bursty",
        "On/off bursts 7, 7 and 10 s apart: idle gaps shorter than, near and longer "
        "than the boot delay",
        seed=1,
        groups=(
            group("b0", 0, 7, 1.0),
            group("b1", 7, 7, 1.0),
            group("b2", 14, 7, 1.0),
            group("b3", 24, 7, 1.0),
        ),
    ),
    Trace(
        "bursty-repeat",
        "The bursts of `bursty`, of one task prefix (the same function run again): from the "
        "second burst on, the scheduler knows the tasks' duration when they arrive (the "
        "simulator-agreement test's trace)",
        seed=1,
        groups=tuple(group(f"burst-{i}", at, 7, 1.0) for i, at in enumerate([0, 7, 14, 24])),
    ),
    Trace(
        "dependent",
        "A burst whose held results feed a small dependent burst 8 s later",
        seed=2,
        groups=(
            group("map", 0, 10, 1.0, hold=True, output_bytes=100_000),
            group("reduce", 8, 4, 1.0, depends_on="map"),
        ),
    ),
    Trace(
        "long-unknown",
        "A few long tasks whose duration the scheduler cannot know in advance",
        seed=3,
        groups=(group("long", 0, 3, 4.0, jitter=0.3),),
    ),
    Trace(
        "tiny",
        "Many tiny tasks",
        seed=4,
        groups=(group("tiny", 0, 200, 0.03),),
    ),
    Trace(
        "memory",
        "Persist 64 MB, stay idle, then a dependent burst on the persisted data",
        seed=5,
        groups=(
            group("persist", 0, 8, 0.2, hold=True, output_bytes=8_000_000, jitter=0.0),
            group("use", 6, 6, 1.0, depends_on="persist"),
        ),
    ),
    Trace(
        "ramp",
        "Load ramping up then down, one group per second",
        seed=6,
        groups=tuple(
            group(f"r{i}", float(i), count, 1.0, burst="ramp")
            for i, count in enumerate([1, 2, 3, 2, 1])
        ),
    ),
]

SCALE = Trace(
    "scale-1m",
    "Simulator only: 1 000 000 one-second tasks in 10 waves, for 10 000 workers",
    seed=7,
    groups=tuple(group(f"w{i}", 20.0 * i, 100_000, 1.0) for i in range(10)),
)


GAPS = Trace(
    "gaps",
    "Simulator only: bursts of 60 one-second tasks with idle gaps of about 5, 25 and 55 s "
    "(shorter than, near and far beyond twice the boot delay)",
    seed=8,
    groups=tuple(group(f"g{i}", at, 60, 1.0) for i, at in enumerate([0.0, 20.0, 60.0, 130.0])),
)


def _session(name: str, seed: int, minutes: float, think: tuple[float, float]) -> Trace:
    """Bursts of varied size and task length separated by random think-time gaps."""
    rng = random.Random(seed)
    groups, at, index = [], 0.0, 0
    while at < minutes * 60:
        count, duration = rng.randint(20, 120), rng.choice([0.5, 1.0, 2.0, 4.0])
        groups.append(group(f"s{index}", round(at, 1), count, duration))
        busy = count * duration / 20  # about the time the burst keeps 20 workers busy
        at += busy + rng.uniform(*think)
        index += 1
    low, high = think
    return Trace(
        name,
        f"Simulator only: a {minutes:g}-minute interactive session, bursts of 20-120 tasks "
        f"(0.5-4 s), think time {low:g}-{high:g} s between them",
        seed=seed,
        groups=tuple(groups),
    )


SUITE = [
    _session("session-long", 11, 60, (30.0, 300.0)),
    _session("session-short", 12, 20, (30.0, 60.0)),
    Trace(
        "map-reduce",
        "Simulator only: a map of 2000 one-second tasks whose held results feed a reduce of "
        "40 five-second tasks",
        seed=13,
        groups=(
            group("map", 0, 2000, 1.0, jitter=0.3, hold=True, output_bytes=1_000_000),
            group("reduce", 0, 40, 5.0, depends_on="map"),
        ),
    ),
    Trace(
        "trickle-spikes",
        "Simulator only: 30 minutes of one 2 s task every 10 s, with spikes of 150 one-second "
        "tasks at irregular times",
        seed=14,
        groups=tuple(
            sorted(
                [group(f"t{i}", 10.0 * i, 1, 2.0) for i in range(180)]
                + [group(f"spike{i}", at, 150, 1.0) for i, at in enumerate([300, 740, 1130, 1510])],
                key=lambda g: g.submit_at,
            )
        ),
    ),
    Trace(
        "periodic",
        "Simulator only: 60 one-second tasks every 3 minutes for 45 minutes (a cron-like job)",
        seed=15,
        groups=tuple(group(f"p{i}", 180.0 * i, 60, 1.0) for i in range(15)),
    ),
]
"""The long simulated suite (`make bench` simulates it at boot delays of 5, 30 and 90 s)."""


def main() -> None:
    HERE.mkdir(exist_ok=True)
    for trace in [*TRACES, SCALE, GAPS, *SUITE]:
        save_trace(trace, HERE / f"{trace.name}.json")
        print(HERE / f"{trace.name}.json")


if __name__ == "__main__":
    main()
