"""Hand a worker's data over through the scheduler when something outside stops it (SIGTERM).

An eviction, a preemption, a batch walltime, ``docker stop``, a Marathon kill: each sends the
worker SIGTERM and, after a grace period, SIGKILL. distributed's ``dask worker`` answers SIGTERM
by closing the nanny, which closes its worker process at once; results held only by that worker
are lost and recomputed (or lost for good, for scattered data). With this module loaded as a
nanny preload *and* a worker preload::

    dask worker ... --preload-nanny dask_deploy.worker_preload --preload dask_deploy.worker_preload

the nanny, when it closes while its worker still runs, first asks the scheduler to retire the
worker (``retire_workers``: every result it alone holds is copied to another worker), waiting
at most ``$DASK_DEPLOY_HANDOVER_SECONDS`` (default 20), then closes as usual. Set it below the
grace period the resource manager gives (Kubernetes' ``terminationGracePeriodSeconds``, Docker's
stop timeout, Marathon's ``taskKillGracePeriodSeconds``, SLURM's ``KillWait``) by the ~10 s the
nanny takes to stop its worker process.

The worker process itself ignores SIGTERM and SIGINT while it has a nanny: a batch system or
``kill`` on the process group signals both (LSF's ``bkill`` and run limit send SIGINT, then
SIGTERM, to the whole job), and a worker that died at once would leave nothing to hand over.
The nanny answers either signal by closing, which hands over first, ignoring further signals
while it does. (The nanny's own escalations still work: its memory monitor follows an ignored
SIGTERM with SIGKILL one check later, and its close kills a worker that has not stopped in
time.)
Without a nanny (``--no-nanny``) the worker hands over by itself (``Worker.close_gracefully``)
on SIGTERM.

A worker the scheduler already retired (the scaler's scale-down) is gone from the scheduler
before its nanny closes, so nothing is asked twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

# Under "distributed", whose log configuration `dask worker` applies (INFO, to stderr).
logger = logging.getLogger("distributed.dask_deploy.worker_preload")

HANDOVER_ENV = "DASK_DEPLOY_HANDOVER_SECONDS"
#: Tasks started from a signal handler, kept referenced until they finish.
_background: set[asyncio.Future[Any]] = set()
DEFAULT_HANDOVER_SECONDS = 20.0
#: Seconds ``dask worker`` gives its nanny, on SIGTERM, to stop the worker process after the
#: handover (``Nanny.close(timeout=10)``): a grace period must cover the handover plus this.
NANNY_STOP_SECONDS = 10


def handover_seconds() -> float:
    """How long a handover may take, from ``$DASK_DEPLOY_HANDOVER_SECONDS``."""
    raw = os.environ.get(HANDOVER_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_HANDOVER_SECONDS
    except ValueError:
        logger.warning(
            "%s: got %r, expected seconds; using %g", HANDOVER_ENV, raw, DEFAULT_HANDOVER_SECONDS
        )
        return DEFAULT_HANDOVER_SECONDS
    return max(value, 0.0)


def dask_setup(server: Any) -> None:
    """Nanny: nothing to do until it closes. Worker: take over SIGTERM (see the module doc)."""
    from distributed import Nanny

    if isinstance(server, Nanny):
        return
    loop = asyncio.get_running_loop()
    if getattr(server, "nanny", None):
        # The nanny hands over, then closes this process; dying now would lose the data.
        loop.add_signal_handler(signal.SIGTERM, _ignored, signal.SIGTERM)
        loop.add_signal_handler(signal.SIGINT, _ignored, signal.SIGINT)
        return

    def hand_over() -> None:
        loop.remove_signal_handler(signal.SIGTERM)  # a second SIGTERM stops at once
        logger.info("SIGTERM: handing this worker's data over through the scheduler")
        _keep(
            asyncio.ensure_future(
                asyncio.wait_for(
                    server.close_gracefully(reason="SIGTERM: handover"), handover_seconds()
                )
            )
        ).add_done_callback(lambda done: _close_anyway(server, done))

    loop.add_signal_handler(signal.SIGTERM, hand_over)


def _hold_signals() -> Callable[[], None]:
    """Ignore SIGTERM and SIGINT until the returned function is called.

    ``dask worker`` restores the default action after the first signal, so a second one (LSF
    sends SIGINT, then SIGTERM; an impatient resource manager repeats SIGTERM) would kill the
    nanny in the middle of the handover and lose the data it is moving. The resource
    manager's SIGKILL after its grace period still ends everything.
    """
    loop = asyncio.get_running_loop()
    held = (signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.getsignal(signum) for signum in held}
    try:
        for signum in held:
            loop.add_signal_handler(signum, _ignored_during_handover, signum)
    except (RuntimeError, ValueError):  # a nanny outside the main thread: no signals to hold
        return lambda: None

    def release() -> None:
        for signum in held:
            loop.remove_signal_handler(signum)
            signal.signal(signum, previous[signum])

    return release


def _ignored_during_handover(signum: int) -> None:
    logger.info("%s during the handover: ignored", signal.Signals(signum).name)


def _ignored(signum: int) -> None:
    logger.info(
        "%s: the nanny hands this worker's data over, then stops it", signal.Signals(signum).name
    )


def _close_anyway(server: Any, done: asyncio.Future[Any]) -> None:
    if done.cancelled() or done.exception() is not None:
        logger.warning("handover did not finish in time; closing anyway")
        _keep(asyncio.ensure_future(server.close(reason="SIGTERM: handover timed out")))


def _keep(task: asyncio.Future[Any]) -> asyncio.Future[Any]:
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


async def dask_teardown(server: Any) -> None:
    """Nanny: its worker still runs, so it is being stopped from outside: hand over first."""
    from distributed import Nanny

    if not isinstance(server, Nanny):
        return
    process: Any = server.process  # distributed leaves WorkerProcess untyped
    if process is None or not process.is_alive():
        return
    # The nanny learns its worker's address from the worker process a moment after the worker
    # registered (longer on a loaded machine); until then the worker is found by its name.
    address: str | None = server.worker_address
    if address is not None:
        which: dict[str, Any] = {"workers": [address]}
    elif server.name is not None:
        which = {"names": [server.name]}
    else:
        logger.warning("no handover: the worker has neither an address nor a name yet")
        return
    worker = address or f"named {server.name!r}"
    seconds = handover_seconds()
    logger.info("handing worker %s over through the scheduler (at most %gs)", worker, seconds)
    started = time.monotonic()
    release_signals = _hold_signals()
    try:
        retired = await asyncio.wait_for(
            server.scheduler.retire_workers(
                **which,
                close_workers=False,
                remove=True,
                stimulus_id=f"dask-deploy-handover-{time.time()}",
            ),
            seconds,
        )
    except Exception as error:
        logger.warning("handover of %s failed, closing anyway: %r", worker, error)
        return
    finally:
        release_signals()
    if retired:
        logger.info("handed %s over in %.1fs", ", ".join(retired), time.monotonic() - started)
    else:
        logger.warning(
            "the scheduler retired nothing for %s (already retired, or its data had nowhere "
            "to go); closing",
            worker,
        )
