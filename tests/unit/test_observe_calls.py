"""What the scaler's link asks the scheduler each tick: one summary call, or the older handlers.

A stand-in for distributed's ``rpc`` answers like a scheduler does: a handler it has returns
its reply, one it lacks answers ``None`` (distributed logs "No handler ... found" and replies
nothing useful). The calls it receives are what the scheduler would spend time in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dask_deploy.observe import RpcScheduler, parse_summary
from dask_deploy.scheduler_preload import COUNTS_HANDLER, SUMMARY_HANDLER

SUMMARY = {
    "queued": 4,
    "unrunnable": 1,
    "work_seconds": 12.5,
    "adaptive_target": 3,
    "closable": 2,
    "workers": {
        "address": ["tcp://h:2", "tcp://h:1", "tcp://h:3"],
        "name": ["b", "a", 7],
        "status": ["running", "running", "paused"],
        "threads": [2, 2, 1],
        "memory_limit": [100, 100, None],
        "nbytes": [0, 10, 20],
        "processing": [0, 1, 3],
    },
}
IDENTITY = {
    "id": "scheduler-1",
    "workers": {
        "tcp://h:1": {"name": "a", "status": "running", "nthreads": 2, "memory_limit": 100},
        "tcp://h:2": {"name": "b", "status": "running", "nthreads": 2, "memory_limit": 100},
        "tcp://h:3": {
            "name": 7,
            "status": "paused",
            "nthreads": 1,
            "memory_limit": None,
            "metrics": {"managed_bytes": 20},
        },
    },
}
COUNTS = {
    "queued": 4,
    "unrunnable": 1,
    "work_seconds": 12.5,
    "workers": {
        "tcp://h:1": {"nbytes": 10, "processing": 1},
        "tcp://h:2": {"nbytes": 0, "processing": 0},
        "tcp://h:3": {"nbytes": 20, "processing": 3},
    },
}


class SchedulerStandIn:
    """Answers RPC calls from ``handlers``; records each call's name."""

    def __init__(self, handlers: dict[str, Callable[..., Any]], *, raises: bool = False) -> None:
        self.handlers = handlers
        self.raises = raises
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Callable[..., Any]:
        async def call(**kwargs: Any) -> Any:
            self.calls.append(name)
            if name in self.handlers:
                return self.handlers[name](**kwargs)
            if self.raises:  # as some distributed versions do
                raise KeyError(name)
            return None

        return call

    async def close_rpc(self) -> None:
        pass


def stock_handlers(identity: dict[str, Any] = IDENTITY) -> dict[str, Callable[..., Any]]:
    return {
        "identity": lambda: identity,
        "processing": lambda: {"tcp://h:1": ["x"], "tcp://h:3": ["y", "z", "w"]},
        "adaptive_target": lambda target_duration: 3,
        "workers_to_close": lambda n, attribute: ["b", "a"][:n],
    }


def link_to(scheduler: SchedulerStandIn) -> RpcScheduler:
    link = RpcScheduler("tcp://127.0.0.1:1", connection_args={})
    link._rpc = scheduler
    return link


async def test_with_the_preload_a_tick_is_one_summary_call() -> None:
    received: list[Any] = []
    scheduler = SchedulerStandIn(
        {SUMMARY_HANDLER: lambda target_duration: received.append(target_duration) or SUMMARY}
    )
    link = link_to(scheduler)
    for _ in range(3):
        state = await link.observe(target_duration=7.0)
    assert scheduler.calls == [SUMMARY_HANDLER] * 3
    assert received == [7.0] * 3
    assert [w.address for w in state.workers] == ["tcp://h:1", "tcp://h:2", "tcp://h:3"]
    assert state.workers_to_close == ("b", "a")  # the reply's order, first `closable`
    assert state.workers[2].name == "7" and state.workers[2].memory_limit == 0
    assert (state.adaptive_target, state.tasks_processing) == (3, 4)
    assert (state.tasks_queued, state.tasks_unrunnable, state.work_seconds) == (4, 1, 12.5)


@pytest.mark.parametrize("raises", [False, True])
async def test_an_older_preload_gets_the_calls_of_before_and_the_same_snapshot(
    raises: bool,
) -> None:
    scheduler = SchedulerStandIn(
        {**stock_handlers(), COUNTS_HANDLER: lambda: COUNTS}, raises=raises
    )
    link = link_to(scheduler)
    first = await link.observe(target_duration=None)
    second = await link.observe(target_duration=None)
    tick = ["identity", COUNTS_HANDLER, "adaptive_target", "workers_to_close"]
    assert scheduler.calls == [SUMMARY_HANDLER, *tick, *tick]  # the summary asked once
    assert first == second == parse_summary(SUMMARY)


async def test_without_the_preload_counts_are_unknown_and_asked_for_once() -> None:
    scheduler = SchedulerStandIn(stock_handlers())
    link = link_to(scheduler)
    await link.observe(target_duration=None)
    state = await link.observe(target_duration=None)
    tick = ["identity", "processing", "adaptive_target", "workers_to_close"]
    assert scheduler.calls == [SUMMARY_HANDLER, "identity", COUNTS_HANDLER, *tick[1:], *tick]
    assert state.tasks_queued is None and state.work_seconds is None
    assert [w.stored_bytes for w in state.workers] == [0, 0, 20]  # from the heartbeats
    assert [w.processing for w in state.workers] == [1, 0, 3]


async def test_a_restarted_scheduler_is_asked_for_the_summary_again() -> None:
    scheduler = SchedulerStandIn(stock_handlers())
    link = link_to(scheduler)
    await link.observe(target_duration=None)
    # the scheduler comes back (a new id), now with the preload
    scheduler.handlers = {
        **stock_handlers({**IDENTITY, "id": "scheduler-2"}),
        SUMMARY_HANDLER: lambda target_duration: SUMMARY,
    }
    scheduler.calls.clear()
    assert await link.observe(target_duration=None) == parse_summary(SUMMARY)
    assert await link.observe(target_duration=None) == parse_summary(SUMMARY)
    assert scheduler.calls == ["identity", SUMMARY_HANDLER, SUMMARY_HANDLER]
