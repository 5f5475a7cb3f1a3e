"""The scheduler's side at scale: time in the scaler's RPC handlers per tick, 1 000 workers.

    python bench/scheduler_cost.py [--workers 1000] [--ticks 20] [--older-preload]

A real ``distributed.Scheduler`` (with the ``dask_deploy.scheduler_preload`` handler) gets
``--workers`` lightweight workers that register and heartbeat through the real protocol: each
opens a comm and sends the ``register-worker`` message a ``distributed.Worker`` sends (with the
metrics payload of one real worker started for the purpose), then heartbeats with
``heartbeat_worker`` at the interval the scheduler asks for. They run no tasks and listen on no
port. The scaler's own link (``dask_deploy.observe.RpcScheduler``) then observes once per tick,
and the time the scheduler spends inside each handler it calls is summed per tick, next to
``adaptive_target`` alone (what distributed's ``Adaptive`` calls each tick, called once per tick
after the scaler's observation). The time to serialize the replies on the scheduler's event
loop is not inside the handlers and not counted.

With ``--older-preload`` the scheduler has only the preload's ``dask_deploy_counts`` handler of
earlier versions, and the scaler falls back to the stock handlers (what it costs against such a
scheduler, and what every tick cost before ``dask_deploy_summary``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed import Scheduler, Worker
from distributed.comm import connect
from distributed.core import rpc
from distributed.versions import get_versions

sys.path.insert(0, str(Path(__file__).parent))

from dask_deploy import scheduler_preload
from dask_deploy.observe import RpcScheduler

OURS_HANDLERS = (scheduler_preload.SUMMARY_HANDLER,)
"""What the scaler calls on the scheduler each tick (observe.RpcScheduler.observe)."""
OLDER_PRELOAD_HANDLERS = (
    "identity",
    scheduler_preload.COUNTS_HANDLER,
    "adaptive_target",
    "workers_to_close",
)
"""What it calls each tick on a scheduler with only the counts handler of earlier versions."""


@dataclass(frozen=True)
class Cost:
    workers: int
    ticks: int
    ours_ms: float
    """Median per tick, all of the scaler's handlers."""
    per_handler_ms: dict[str, float]
    """Median per call of each handler the scaler called."""
    adaptive_target_ms: float
    """Median per call of ``adaptive_target`` alone: distributed's Adaptive, per tick."""
    older_preload: bool = False
    """The scheduler had only the counts handler (the scaler's fallback was measured)."""


def _timed(scheduler: Scheduler, name: str, spent: dict[str, list[float]]) -> None:
    original: Callable[..., Any] = scheduler.handlers[name]

    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = original(*args, **kwargs)
        if asyncio.iscoroutine(result):
            result = await result
        spent[name].append(time.perf_counter() - started)
        return result

    scheduler.handlers[name] = timed


async def _register(address: str, index: int, metrics: dict[str, Any]) -> Any:
    comm = await connect(address)
    await comm.write(
        {
            "op": "register-worker",
            "reply": False,
            "address": f"tcp://127.0.0.1:{20000 + index}",
            "status": "running",
            "nthreads": 1,
            "name": f"light-{index}",
            "now": time.time(),
            "resources": {},
            "memory_limit": 2 * 1024**3,
            "local_directory": "/tmp",
            "services": {},
            "nanny": None,
            "pid": 0,
            "versions": get_versions(),
            "metrics": metrics,
            "extra": {},
            "stimulus_id": f"worker-connect-{time.time()}",
            "server_id": f"Worker-{uuid.uuid4()}",
        },
        serializers=["msgpack"],
    )
    reply = await comm.read(deserializers=["msgpack"])
    if reply.get("status") != "OK":
        raise RuntimeError(f"register-worker refused: {reply}")
    return comm


async def _heartbeats(
    address: str, count: int, metrics: dict[str, Any], stop: asyncio.Event
) -> int:
    """Each worker heartbeats at the interval the scheduler names (as Worker.heartbeat does)."""
    sent = 0
    link = rpc(address)
    try:
        interval = 1.0
        while not stop.is_set():
            started = time.monotonic()
            for index in range(count):
                if stop.is_set():
                    break
                reply = await link.heartbeat_worker(
                    address=f"tcp://127.0.0.1:{20000 + index}",
                    now=time.time(),
                    metrics=metrics,
                    executing={},
                    extensions={},
                )
                sent += 1
                interval = float(reply.get("heartbeat-interval", interval))
                # spread the workers' heartbeats over their interval
                await asyncio.sleep(max(0.0, interval / count - 0.0001))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    stop.wait(), max(0.0, interval - (time.monotonic() - started))
                )
    finally:
        await link.close_rpc()
    return sent


async def measure(
    workers: int, ticks: int, interval: float = 1.0, *, older_preload: bool = False
) -> Cost:
    scheduler = await Scheduler(host="127.0.0.1", port=0, dashboard=False, dashboard_address=":0")
    scheduler_preload.dask_setup(scheduler)
    handlers = OURS_HANDLERS
    if older_preload:
        del scheduler.handlers[scheduler_preload.SUMMARY_HANDLER]
        handlers = OLDER_PRELOAD_HANDLERS
    comms: list[Any] = []
    link: RpcScheduler | None = None
    adaptive: Any = None
    stop = asyncio.Event()
    heartbeat: asyncio.Task[int] | None = None
    try:
        async with Worker(scheduler.address, nthreads=1, dashboard=False) as real:
            metrics = await real.get_metrics()
        for start in range(0, workers, 50):
            batch = range(start, min(workers, start + 50))
            comms += await asyncio.gather(
                *(_register(scheduler.address, i, metrics) for i in batch)
            )
        while len(scheduler.workers) < workers:
            await asyncio.sleep(0.05)
        heartbeat = asyncio.create_task(_heartbeats(scheduler.address, workers, metrics, stop))
        spent: dict[str, list[float]] = {name: [] for name in {*handlers, "adaptive_target"}}
        for name in spent:
            _timed(scheduler, name, spent)
        link = RpcScheduler(scheduler.address, connection_args={})
        adaptive = rpc(scheduler.address)
        await link.observe(None)  # the first call finds out whether the preload is there
        await adaptive.adaptive_target()

        def total() -> float:
            return sum(sum(values) for values in spent.values())

        ours: dict[str, list[float]] = {name: [] for name in handlers}
        per_tick: list[float] = []
        adaptive_per_tick: list[float] = []
        for _ in range(ticks):
            for values in spent.values():
                values.clear()
            state = await link.observe(None)
            assert len(state.workers) == workers, len(state.workers)
            per_tick.append(total())
            for name in handlers:
                ours[name] += spent[name]
            before = total()
            await adaptive.adaptive_target()
            adaptive_per_tick.append(total() - before)
            await asyncio.sleep(interval)
        return Cost(
            workers=workers,
            ticks=ticks,
            ours_ms=statistics.median(per_tick) * 1000,
            per_handler_ms={n: statistics.median(v) * 1000 for n, v in ours.items() if v},
            adaptive_target_ms=statistics.median(adaptive_per_tick) * 1000,
            older_preload=older_preload,
        )
    finally:
        stop.set()
        if heartbeat is not None:
            with contextlib.suppress(Exception):
                await heartbeat
        if link is not None:
            await link.close()
        if adaptive is not None:
            await adaptive.close_rpc()
        for comm in comms:
            await comm.close()
        await scheduler.close()


def lines(cost: Cost) -> list[str]:
    handlers = ", ".join(f"{name} {ms:.2f}" for name, ms in cost.per_handler_ms.items())
    ours = "ours against an older preload (counts only)" if cost.older_preload else "ours"
    return [
        f"scheduler time per tick with {cost.workers} registered workers (median of "
        f"{cost.ticks} ticks): {ours} {cost.ours_ms:.2f} ms ({handlers}); Adaptive "
        f"(adaptive_target alone) {cost.adaptive_target_ms:.2f} ms; target <= 2 ms for ours: "
        f"{'met' if cost.ours_ms <= 2.0 else 'NOT met'}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--ticks", type=int, default=20)
    parser.add_argument(
        "--older-preload",
        action="store_true",
        help="the scheduler has only the counts handler: measure the scaler's fallback",
    )
    args = parser.parse_args(argv)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    cost = asyncio.run(measure(args.workers, args.ticks, older_preload=args.older_preload))
    for line in lines(cost):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
