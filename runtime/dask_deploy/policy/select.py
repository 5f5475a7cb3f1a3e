"""Choosing which instances to release: shared by the built-in policies."""

from __future__ import annotations

from ..contract import Observation


def choose_release(observation: Observation, count: int, *, idle_only: bool) -> tuple[str, ...]:
    """Names of up to ``count`` instances to release, the cheapest first.

    Pending instances go first (newest first: they are furthest from being
    useful), then connected workers in the scheduler's ``workers_to_close``
    order. Workers the backend did not launch and workers already closing are
    never chosen; with ``idle_only`` a worker with assigned tasks is not either.
    """
    if count <= 0:
        return ()
    chosen: list[str] = [
        instance.name
        for instance in sorted(observation.pending, key=lambda i: i.requested_at, reverse=True)
    ][:count]
    ours = {worker.name: worker for worker in observation.observed}
    for name in observation.workers_to_close:
        if len(chosen) >= count:
            break
        worker = ours.get(name)
        if worker is None or worker.status not in ("running", "paused"):
            continue
        if idle_only and not worker.idle:
            continue
        chosen.append(name)
    return tuple(chosen)
