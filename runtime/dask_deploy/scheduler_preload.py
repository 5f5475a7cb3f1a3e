"""Optional scheduler preload: read-only RPC handlers for the scaler.

Start the scheduler with ``dask scheduler --preload dask_deploy.scheduler_preload``
to register two handlers. Nothing is pickled and nothing is changed.

``dask_deploy_summary`` (what the scaler calls each tick) answers everything one tick
needs in one pass over the workers: the queued and unrunnable task counts and the known
work in seconds of task time (which no stock handler of distributed exposes), the
scheduler's ``adaptive_target`` computed as distributed computes it, and per worker its
name, address, status, threads, memory limit, bytes stored and tasks processing, listed in
the order of the scheduler's ``workers_to_close`` ranking. It replaces four calls
(``identity``, which copies every worker's full identity and metrics, ``adaptive_target``
and ``workers_to_close``, which both group and sort every worker, and the counts).

``dask_deploy_counts`` is the handler of earlier versions (counts, known work and per-worker
load only), kept for scalers that still call it.

The scaler falls back to the counts handler and then to the stock ``identity`` and
``processing`` handlers when these are absent: task counts are then unknown and stored
bytes come from the workers' last heartbeat.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

COUNTS_HANDLER = "dask_deploy_counts"
SUMMARY_HANDLER = "dask_deploy_summary"
SUMMARY_COLUMNS = ("address", "name", "status", "threads", "memory_limit", "nbytes", "processing")
"""The per-worker lists of a summary, one entry per worker in each, in ranking order."""
QUEUED_SAMPLE = 100
"""Queued tasks priced one by one; the rest are assumed alike (as ``adaptive_target`` does)."""
MEMORY_SHARE = 0.6
"""``adaptive_target`` asks for twice the workers when more of their memory is used."""
MEMORY_RATIO = 2
"""``workers_to_close`` keeps this many times the stored bytes in memory limits."""


def known_work(scheduler: Any) -> float:
    """Seconds of task time processing and queued, estimated as ``adaptive_target`` does.

    The processing part is the scheduler's ``total_occupancy``; the queued part prices up to
    100 queued or unrunnable tasks at their prefix's estimated duration and scales that to
    all of them, so the cost does not grow with the queue.
    """
    queued = list(
        itertools.islice(itertools.chain(scheduler.queued, scheduler.unrunnable), QUEUED_SAMPLE)
    )
    priced = 0.0
    for ts in queued:  # added in order, as distributed does (``sum`` rounds differently on 3.12+)
        priced += scheduler._get_prefix_duration(ts.prefix)
    ready = len(scheduler.queued) + len(scheduler.unrunnable)
    if ready > len(queued) > 0:
        priced *= ready / len(queued)
    return float(scheduler.total_occupancy) + priced


def counts(scheduler: Any) -> dict[str, Any]:
    """The task counts and per-worker load of ``scheduler`` (a ``distributed.Scheduler``)."""
    return {
        "queued": len(scheduler.queued),
        "unrunnable": len(scheduler.unrunnable),
        "work_seconds": known_work(scheduler),
        "workers": {
            address: {"nbytes": ws.nbytes, "processing": len(ws.processing)}
            for address, ws in scheduler.workers.items()
        },
    }


def _busy_then_bytes(ws: Any) -> tuple[bool, int]:
    return bool(ws.processing), ws.nbytes


def closing_order(scheduler: Any) -> tuple[list[Any], list[Any]]:
    """The workers the scheduler would let go, in ``workers_to_close`` order, and the others.

    ``workers_to_close`` skips workers running long-running tasks and those the scheduler's
    plugins keep (``valid_workers_downscaling``); it sorts the rest by (idle, -stored
    bytes), stably, and takes them from the end: idle workers first, fewest bytes first,
    ties in reverse order of the scheduler's ``workers`` (by address). ``sorted`` of the
    reversed list on (busy, bytes) is that order. Every worker is its own group: the scaler
    and ``adaptive_target`` pass no key.
    """
    workers = scheduler.workers
    # In the order of workers.values() (a SortedDict's: by address); this loop runs in C.
    everyone = list(map(workers.__getitem__, workers))
    candidates = [ws for ws in everyone if not ws.long_running]
    for plugin in list(scheduler.plugins.values()):
        candidates = plugin.valid_workers_downscaling(scheduler, candidates)
    ranked = sorted(reversed(candidates), key=_busy_then_bytes)
    if len(ranked) == len(everyone):
        return ranked, []
    listed = {ws.address for ws in ranked}
    return ranked, [ws for ws in everyone if ws.address not in listed]


def target_duration_seconds(target_duration: float | str | None) -> float:
    """The seconds ``adaptive_target`` aims to finish the known work in (its default when None)."""
    import dask.config
    from dask.utils import parse_timedelta

    if target_duration is None:
        target_duration = dask.config.get("distributed.adaptive.target-duration")
    return float(parse_timedelta(target_duration))


def cpu_target(
    work_seconds: float,
    target_duration: float,
    tasks_ready: int,
    processing: Sequence[int],
    threads: Sequence[int],
) -> int:
    """The CPU part of ``adaptive_target``: workers to finish the work in the target duration.

    No more threads than tasks (queued plus processing), divided by the mean threads per
    worker, and one worker when tasks wait and no worker is there. distributed adds the
    processing counts worker by worker until they exceed the target; the minimum of the
    target and the whole sum is the same number.
    """
    cpu = math.ceil(work_seconds / target_duration)
    cpu = min(tasks_ready + sum(processing), cpu)
    if threads:
        cpu = math.ceil(cpu / sum(threads) * len(threads))
    if tasks_ready and not threads:
        cpu = max(1, cpu)
    return cpu


def closable_count(processing: list[int], memory_limit: list[int], nbytes: int) -> int:
    """How many workers ``workers_to_close()`` (memory ratio 2, no count) would let go.

    ``processing`` and ``memory_limit`` are the candidates' (see :func:`closing_order`), in
    closing order; ``nbytes`` is the bytes they store. Idle workers go, in that order, as
    long as the memory limits of those left hold twice the bytes; the first busy worker
    ends the list. Idle workers come first in that order, so they are the zeros counted.
    """
    idle = processing.count(0)
    needed = MEMORY_RATIO * nbytes
    if needed == 0:
        return idle  # what is left always holds no bytes (limits are never negative)
    limit = sum(memory_limit)
    for count in range(idle):
        limit -= memory_limit[count]
        if limit < needed:
            return count
    return idle


def summary(scheduler: Any, target_duration: float | str | None = None) -> dict[str, Any]:
    """Everything the scaler needs from ``scheduler`` for one tick, in one pass.

    ``adaptive_target`` is the number ``Scheduler.adaptive_target(target_duration)``
    returns for the same state (the unit tests check it against distributed's own code).
    ``workers`` holds one list per :data:`SUMMARY_COLUMNS` entry, workers in the
    ``workers_to_close`` order; the first ``closable`` of them are that ranking, which
    ``workers_to_close(n=<all workers>, attribute="name")`` returns for the same state.

    One edge differs: the plugins' ``valid_workers_downscaling`` is asked once per call,
    where ``adaptive_target`` (when it scales down) and ``workers_to_close`` each asked it:
    a plugin that answers differently on two calls in a row would have made the target
    and the ranking disagree; here both come from one answer.
    """
    ranked, kept = closing_order(scheduler)
    everyone = ranked + kept if kept else ranked
    processing = [len(ws.processing) for ws in everyone]
    memory_limit = [ws.memory_limit for ws in everyone]
    nbytes = [ws.nbytes for ws in everyone]
    threads = [ws.nthreads for ws in everyone]
    tasks_ready = len(scheduler.queued) + len(scheduler.unrunnable)
    work = known_work(scheduler)

    duration = target_duration_seconds(target_duration)
    cpu = cpu_target(work, duration, tasks_ready, processing, threads)
    limit = sum(memory_limit)
    memory = 2 * len(everyone) if limit > 0 and sum(nbytes) > MEMORY_SHARE * limit else 0
    target = max(memory, cpu)
    if target < len(everyone):
        n = len(ranked)
        stored = sum(nbytes[:n]) if kept else sum(nbytes)
        target = len(everyone) - closable_count(processing[:n], memory_limit[:n], stored)
    return {
        "queued": len(scheduler.queued),
        "unrunnable": len(scheduler.unrunnable),
        "work_seconds": work,
        "adaptive_target": target,
        "closable": len(ranked),
        "workers": {
            "address": [ws.address for ws in everyone],
            "name": [ws.name for ws in everyone],
            # An Enum member's documented _name_ (the ``name`` property costs ten times more)
            "status": [ws.status._name_ for ws in everyone],
            "threads": threads,
            "memory_limit": memory_limit,
            "nbytes": nbytes,
            "processing": processing,
        },
    }


def dask_setup(scheduler: Any) -> None:
    """Entry point of dask's preload mechanism: register the read-only handlers."""

    def counts_handler(comm: object = None) -> dict[str, Any]:
        return counts(scheduler)

    def summary_handler(
        comm: object = None, target_duration: float | str | None = None
    ) -> dict[str, Any]:
        return summary(scheduler, target_duration)

    scheduler.handlers[COUNTS_HANDLER] = counts_handler
    scheduler.handlers[SUMMARY_HANDLER] = summary_handler
