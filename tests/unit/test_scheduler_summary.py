"""The preload's one-call summary: the numbers distributed's own handlers give, in one pass.

A scheduler-like object holds real ``distributed.scheduler.WorkerState`` objects and the few
attributes ``Scheduler.adaptive_target`` and ``Scheduler.workers_to_close`` read; distributed's
own methods run on it unbound, so the summary is checked against the code the scaler called
before (``adaptive_target`` and ``workers_to_close(n=all, attribute="name")`` each tick).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from distributed import Scheduler
from distributed.core import Status
from distributed.scheduler import WorkerState
from hypothesis import given
from hypothesis import strategies as st
from sortedcontainers import SortedDict

from dask_deploy.observe import parse_summary
from dask_deploy.scheduler_preload import COUNTS_HANDLER, SUMMARY_HANDLER, dask_setup, summary

GiB = 2**30


@dataclass(frozen=True)
class Spec:
    """One worker: threads, memory limit, bytes stored, tasks processing (long-running ones)."""

    threads: int = 1
    memory_limit: int = 2 * GiB
    nbytes: int = 0
    processing: int = 0
    long_running: int = 0
    status: Status = Status.running


class KeepNamed:
    """A scheduler plugin that keeps the named workers (``valid_workers_downscaling``)."""

    def __init__(self, kept: set[str]) -> None:
        self.kept = kept

    def valid_workers_downscaling(self, scheduler: Any, workers: list[Any]) -> list[Any]:
        return [ws for ws in workers if ws.name not in self.kept]


@dataclass
class SchedulerLike:
    """What distributed's adaptive_target and workers_to_close read, without a server."""

    workers: SortedDict = field(default_factory=SortedDict)
    queued: list[Any] = field(default_factory=list)
    unrunnable: dict[Any, Any] = field(default_factory=dict)
    total_occupancy: float = 0.0
    plugins: dict[str, Any] = field(default_factory=dict)
    handlers: dict[str, Any] = field(default_factory=dict)
    UNKNOWN_TASK_DURATION: float = 0.5

    adaptive_target = Scheduler.adaptive_target
    workers_to_close = Scheduler.workers_to_close
    _get_prefix_duration = Scheduler._get_prefix_duration


class Task:
    """A task whose prefix has this average duration (negative: none observed yet)."""

    def __init__(self, duration: float) -> None:
        self.prefix = SimpleNamespace(duration_average=duration, max_exec_time=0.0)


def scheduler_like(
    specs: list[Spec],
    *,
    queued: list[float] = (),  # type: ignore[assignment]
    unrunnable: int = 0,
    occupancy: float = 0.0,
    kept: set[str] = frozenset(),  # type: ignore[assignment]
) -> SchedulerLike:
    """Workers ``w0``, ``w1``... at addresses in the same order, with these specs."""
    state = SchedulerLike(
        queued=[Task(d) for d in queued],
        unrunnable={Task(1.0): None for _ in range(unrunnable)},
        total_occupancy=occupancy,
    )
    if kept:
        state.plugins["keep"] = KeepNamed(kept)
    for index, spec in enumerate(specs):
        ws = WorkerState(
            address=f"tcp://10.0.0.{index // 100}:{10000 + index % 100}",
            status=spec.status,
            pid=0,
            name=f"w{index}",
            nthreads=spec.threads,
            memory_limit=spec.memory_limit,
            local_directory="/tmp",
            nanny=None,
            server_id=f"s{index}",
        )
        ws.nbytes = spec.nbytes
        running = [object() for _ in range(spec.processing)]
        ws.processing = set(running)  # type: ignore[arg-type]
        ws.long_running = set(running[: spec.long_running])  # type: ignore[arg-type]
        state.workers[ws.address] = ws
    return state


def ranking(state: SchedulerLike) -> tuple[str, ...]:
    return parse_summary(summary(state)).workers_to_close


def distributed_ranking(state: SchedulerLike) -> tuple[str, ...]:
    names = state.workers_to_close(n=len(state.workers), attribute="name")
    return tuple(str(name) for name in names)


def test_idle_workers_with_the_fewest_bytes_are_ranked_first_busy_ones_last() -> None:
    state = scheduler_like(
        [Spec(nbytes=5), Spec(processing=1), Spec(nbytes=1), Spec(nbytes=5), Spec()]
    )
    # ties (w0 and w3, both 5 bytes) go latest first, as distributed takes them
    assert ranking(state) == ("w4", "w2", "w3", "w0", "w1") == distributed_ranking(state)


def test_workers_running_long_running_tasks_or_kept_by_a_plugin_are_listed_not_ranked() -> None:
    state = scheduler_like(
        [Spec(), Spec(processing=2, long_running=1), Spec(), Spec()], kept={"w2"}
    )
    observed = parse_summary(summary(state))
    assert observed.workers_to_close == ("w3", "w0") == distributed_ranking(state)
    assert [w.name for w in observed.workers] == ["w0", "w1", "w2", "w3"]  # by address
    assert observed.workers[1].processing == 2


def test_the_summary_reports_each_worker_and_the_counts() -> None:
    state = scheduler_like(
        [Spec(threads=4, memory_limit=0, nbytes=7, processing=3, status=Status.paused)],
        queued=[2.0, 2.0],
        unrunnable=1,
        occupancy=6.0,
    )
    observed = parse_summary(summary(state, target_duration=5))
    (worker,) = observed.workers
    assert (worker.name, worker.address, worker.status) == ("w0", "tcp://10.0.0.0:10000", "paused")
    assert (worker.threads, worker.memory_limit, worker.stored_bytes) == (4, 0, 7)
    assert (observed.tasks_processing, observed.tasks_queued, observed.tasks_unrunnable) == (
        3,
        2,
        1,
    )
    assert observed.work_seconds == 6.0 + 2.0 + 2.0 + 1.0
    # 11 s of work to finish in 5 s: 3 threads, on workers of 4 threads: 1 worker
    assert observed.adaptive_target == 1 == state.adaptive_target(5)


def test_idle_workers_holding_data_are_kept_for_twice_their_bytes() -> None:
    # 4 idle workers of 2 GiB hold 1.5 GiB: two of them must stay (twice the bytes is 3 GiB)
    state = scheduler_like([Spec(nbytes=GiB // 2)] * 3 + [Spec()])
    assert summary(state)["adaptive_target"] == 2 == state.adaptive_target()
    # exactly twice the bytes left (2 GiB for 1 GiB) is enough
    state = scheduler_like([Spec(), Spec(nbytes=GiB)])
    assert summary(state)["adaptive_target"] == 1 == state.adaptive_target()


def test_the_target_defaults_to_dasks_target_duration() -> None:
    import dask

    state = scheduler_like([Spec(processing=4)], occupancy=30.0)
    with dask.config.set({"distributed.adaptive.target-duration": "10s"}):
        assert summary(state)["adaptive_target"] == 3 == state.adaptive_target()


def test_both_handlers_are_registered() -> None:
    state = scheduler_like([Spec(nbytes=3, processing=1)], queued=[1.0])
    dask_setup(state)
    reply = state.handlers[SUMMARY_HANDLER](None, target_duration=1.0)
    assert reply["adaptive_target"] == state.adaptive_target(1.0)
    assert state.handlers[COUNTS_HANDLER]() == {
        "queued": 1,
        "unrunnable": 0,
        "work_seconds": 1.0,
        "workers": {"tcp://10.0.0.0:10000": {"nbytes": 3, "processing": 1}},
    }


specs = st.builds(
    Spec,
    threads=st.integers(1, 4),
    memory_limit=st.sampled_from([0, GiB, 2 * GiB]),
    nbytes=st.sampled_from([0, 0, 1, GiB // 4, GiB, 3 * GiB]),
    processing=st.integers(0, 3),
    long_running=st.integers(0, 1),
    status=st.sampled_from([Status.running, Status.paused, Status.closing_gracefully]),
).map(lambda s: s if s.long_running <= s.processing else Spec(**{**s.__dict__, "long_running": 0}))


@given(
    workers=st.lists(specs, max_size=12),
    queued=st.lists(st.sampled_from([-1.0, 0.1, 0.5, 3.0]), max_size=130),
    unrunnable=st.integers(0, 3),
    occupancy=st.sampled_from([0.0, 0.3, 4.0, 17.5, 120.0]),
    target_duration=st.sampled_from([None, 0.5, 5.0, "3s"]),
    kept=st.sets(st.sampled_from([f"w{i}" for i in range(4)])),
)
def test_the_summary_agrees_with_distributeds_handlers(
    workers: list[Spec],
    queued: list[float],
    unrunnable: int,
    occupancy: float,
    target_duration: float | str | None,
    kept: set[str],
) -> None:
    state = scheduler_like(
        workers, queued=queued, unrunnable=unrunnable, occupancy=occupancy, kept=kept
    )
    reply = summary(state, target_duration)
    assert reply["adaptive_target"] == state.adaptive_target(target_duration)
    assert ranking(state) == distributed_ranking(state)
    assert sorted(reply["workers"]["address"]) == list(state.workers)
