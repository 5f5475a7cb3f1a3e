"""Optional scheduler preload: one read-only RPC handler for the scaler.

Start the scheduler with ``dask scheduler --preload dask_deploy.scheduler_preload``
to register the handler ``dask_deploy_counts``. It returns the queued and
unrunnable task counts (which no stock handler of distributed exposes) and, per
worker, the bytes stored and tasks processing as the scheduler knows them right
now. The scaler falls back to the stock ``identity`` and ``processing`` handlers
when the handler is absent: task counts are then unknown and stored bytes come
from the workers' last heartbeat. Nothing is pickled and nothing is changed.
"""

from __future__ import annotations

from typing import Any

HANDLER = "dask_deploy_counts"


def counts(scheduler: Any) -> dict[str, Any]:
    """The task counts and per-worker load of ``scheduler`` (a ``distributed.Scheduler``)."""
    return {
        "queued": len(scheduler.queued),
        "unrunnable": len(scheduler.unrunnable),
        "workers": {
            address: {"nbytes": ws.nbytes, "processing": len(ws.processing)}
            for address, ws in scheduler.workers.items()
        },
    }


def dask_setup(scheduler: Any) -> None:
    """Entry point of dask's preload mechanism: register the read-only handler."""

    def handler(comm: object = None) -> dict[str, Any]:
        return counts(scheduler)

    scheduler.handlers[HANDLER] = handler
