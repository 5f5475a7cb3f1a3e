"""A held result, and its worker stopped from outside: what the handover tests share.

The scheduler runs on the host with the fault suite's ledger preloaded (by file path), which
counts every computation per key and books every result lost with a removed worker. A test
starts two workers through the product (rendered values, the real scaler), puts a result on one
with :func:`hold_on`, stops that worker the way its resource manager does (``docker stop``,
deleting the pod, Marathon's kill), then :func:`assert_handed_over`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distributed import Client, Future

from process_support import wait_for

LEDGER_PRELOAD = Path(__file__).resolve().parent / "faults" / "ledger_preload.py"
HELD_KEY = "held-through-sigterm"


def worker_names(client: Client) -> dict[str, str]:
    """Dask worker name -> address, as the scheduler knows them."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return {str(w["name"]): address for address, w in workers.items()}


def hold_on(client: Client, name: str) -> Future:
    """A result computed on worker ``name`` and held only there (allowed elsewhere, so it can
    move); returns once it is in memory."""
    future = client.submit(
        operator.add,
        40,
        2,
        key=HELD_KEY,
        workers=[worker_names(client)[name]],
        allow_other_workers=True,
    )
    assert future.result(timeout=60) == 42
    holders = client.who_has([future])[HELD_KEY]
    assert list(holders) == [worker_names(client)[name]], holders
    return future


def ledger(client: Client) -> dict[str, Any]:
    return dict(client.sync(client.scheduler.fault_ledger))


def assert_handed_over(
    client: Client,
    future: Future,
    leaver: str,
    leaver_log: Callable[[], str],
    logs: Callable[[], str],
) -> None:
    """The stopped worker ``leaver`` is gone, the client still gets the result, the scheduler
    computed it once and lost nothing with ``leaver``, and the worker logged its handover."""
    wait_for("the stopped worker leaves", lambda: leaver not in worker_names(client), 120, logs)
    assert future.result(timeout=60) == 42
    report = ledger(client)
    assert report["computed"].get(HELD_KEY) == 1, f"recomputed: {report}\n{logs()}"
    assert not report["lost_from"].get(leaver), f"lost with {leaver}: {report}\n{logs()}"
    holders = client.who_has([future])[HELD_KEY]
    assert holders and worker_names(client).get(leaver) not in holders
    wait_for(
        "the stopped worker logs its handover",
        lambda: "handed " in leaver_log(),
        60,
        lambda: leaver_log()[-3000:] + "\n" + logs(),
    )
