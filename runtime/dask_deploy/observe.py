"""The scheduler as the scaler sees it: a snapshot per tick, and retirement.

Talks distributed's own RPC (``distributed.core.rpc``) over ``tcp://`` or
``tls://`` with dask's :class:`~distributed.security.Security`; it runs no
pickled code on the scheduler and does not need the scheduler's HTTP API.

With the optional preload :mod:`dask_deploy.scheduler_preload` a snapshot is one
call of its read-only ``dask_deploy_summary`` handler: task counts and known work
(no stock handler exposes them), the scheduler's ``adaptive_target``, the workers
and their ``workers_to_close`` ranking, from one pass over the workers. Without it
(an older preload, or none) the snapshot takes the stock ``identity``,
``adaptive_target`` and ``workers_to_close`` handlers, plus the older
``dask_deploy_counts`` handler when present, else ``processing``: the counts are
then unknown (``None``) and stored bytes come from the workers' heartbeats; the
scheduler's ``adaptive_target`` still accounts for queued work, so the policies
keep working.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ._errors import UserInputError
from .config import SchedulerSettings
from .policy import WorkerSnapshot
from .scheduler_preload import COUNTS_HANDLER, SUMMARY_COLUMNS, SUMMARY_HANDLER


@dataclass(frozen=True)
class SchedulerState:
    """The scheduler's half of an :class:`~dask_deploy.policy.Observation`."""

    workers: tuple[WorkerSnapshot, ...]
    adaptive_target: int
    tasks_processing: int
    tasks_queued: int | None
    tasks_unrunnable: int | None
    workers_to_close: tuple[str, ...]
    work_seconds: float | None = None


class SchedulerLink(Protocol):
    """What the control loop needs from the scheduler (a fake serves the unit tests)."""

    async def observe(self, target_duration: float | None) -> SchedulerState:
        """One snapshot; raises ``OSError`` (or a subclass) when the scheduler is unreachable."""
        ...

    async def worker_names(self) -> frozenset[str]:
        """Names of the workers connected right now."""
        ...

    async def retire(self, names: Collection[str]) -> frozenset[str]:
        """Retire these workers gracefully; the names the scheduler reports retired."""
        ...

    async def close(self) -> None:
        """Close connections."""
        ...


def parse_workers(
    identity: Mapping[str, Any],
    processing: Mapping[str, Collection[object]],
    counts: Mapping[str, Any] | None,
) -> tuple[WorkerSnapshot, ...]:
    """Worker snapshots from the ``identity`` reply plus load figures.

    ``counts`` is the preload handler's reply, or ``None`` when it is absent.
    """
    live = counts["workers"] if counts is not None else {}
    result = []
    for address, info in sorted(identity.get("workers", {}).items()):
        metrics = info.get("metrics") or {}
        if address in live:
            stored = int(live[address]["nbytes"])
            busy = int(live[address]["processing"])
        else:
            stored = int(metrics.get("managed_bytes", 0))
            busy = len(processing.get(address, ()))
        result.append(
            WorkerSnapshot(
                name=str(info.get("name", address)),
                address=address,
                status=str(info.get("status", "running")),
                threads=int(info.get("nthreads", 1)),
                memory_limit=int(info.get("memory_limit") or 0),
                stored_bytes=stored,
                processing=busy,
            )
        )
    return tuple(result)


def _optional_float(value: object) -> float | None:
    """A number from a reply; ``None`` from an older preload that does not send it."""
    return float(value) if isinstance(value, int | float) else None


def parse_summary(reply: Mapping[str, Any]) -> SchedulerState:
    """The snapshot in a ``dask_deploy_summary`` reply (``scheduler_preload.summary``).

    The reply lists the workers in the scheduler's ``workers_to_close`` order, the first
    ``closable`` of them ranked; the snapshot lists them by address, as ``identity`` does.
    """
    columns = reply["workers"]
    rows = zip(*(columns[column] for column in SUMMARY_COLUMNS), strict=True)
    ranked = [
        WorkerSnapshot(
            name=str(name),
            address=str(address),
            status=str(status),
            threads=int(threads),
            memory_limit=int(memory_limit or 0),
            stored_bytes=int(nbytes),
            processing=int(processing),
        )
        for address, name, status, threads, memory_limit, nbytes, processing in rows
    ]
    workers = tuple(sorted(ranked, key=lambda worker: worker.address))
    return SchedulerState(
        workers=workers,
        adaptive_target=int(reply["adaptive_target"]),
        tasks_processing=sum(w.processing for w in workers),
        tasks_queued=int(reply["queued"]),
        tasks_unrunnable=int(reply["unrunnable"]),
        workers_to_close=tuple(w.name for w in ranked[: int(reply["closable"])]),
        work_seconds=_optional_float(reply.get("work_seconds")),
    )


def retired_names(reply: Mapping[str, Any]) -> frozenset[str]:
    """Names in a ``retire_workers`` reply (address -> worker identity)."""
    return frozenset(str(info.get("name", address)) for address, info in reply.items())


class RpcScheduler:
    """:class:`SchedulerLink` over distributed's RPC."""

    def __init__(
        self, address: str, *, connection_args: Mapping[str, Any], retire_timeout: float = 300.0
    ) -> None:
        from distributed.core import rpc

        self.address = address
        self.retire_timeout = retire_timeout
        self._rpc = rpc(address, connection_args=dict(connection_args), timeout=10)  # type: ignore[no-untyped-call]
        self._without_summary: str | None = None
        """Id of the scheduler found without the summary handler; ``None``: call it."""
        self._has_counts: bool | None = None

    async def _optional(self, handler: str, **kwargs: Any) -> Mapping[str, Any] | None:
        """The reply of one of the preload's handlers; ``None`` when the scheduler lacks it.

        distributed answers a call of an unknown handler with ``None`` (and logs it);
        some versions raise an error naming the handler instead.
        """
        try:
            reply: Mapping[str, Any] | None = await getattr(self._rpc, handler)(**kwargs)
        except (ValueError, KeyError) as error:
            if handler not in str(error):
                raise
            return None
        return reply

    async def _counts(self) -> Mapping[str, Any] | None:
        if self._has_counts is False:
            return None
        reply = await self._optional(COUNTS_HANDLER)
        self._has_counts = reply is not None
        return reply

    async def observe(self, target_duration: float | None) -> SchedulerState:
        if self._without_summary is None:
            reply = await self._optional(SUMMARY_HANDLER, target_duration=target_duration)
            if reply is not None:
                return parse_summary(reply)
        identity = await self._rpc.identity()
        scheduler_id = str(identity.get("id"))
        if self._without_summary not in (None, scheduler_id):
            # Another scheduler answers (restarted, perhaps upgraded): it may have the preload.
            self._has_counts = None
            reply = await self._optional(SUMMARY_HANDLER, target_duration=target_duration)
            if reply is not None:
                self._without_summary = None
                return parse_summary(reply)
        self._without_summary = scheduler_id
        counts = await self._counts()
        processing: Mapping[str, Collection[object]] = (
            {} if counts is not None else await self._rpc.processing()
        )
        workers = parse_workers(identity, processing, counts)
        target = await self._rpc.adaptive_target(target_duration=target_duration)
        ranking = await self._rpc.workers_to_close(n=len(workers), attribute="name")
        return SchedulerState(
            workers=workers,
            adaptive_target=int(target),
            tasks_processing=sum(w.processing for w in workers),
            tasks_queued=None if counts is None else int(counts["queued"]),
            tasks_unrunnable=None if counts is None else int(counts["unrunnable"]),
            workers_to_close=tuple(str(name) for name in ranking),
            work_seconds=None if counts is None else _optional_float(counts.get("work_seconds")),
        )

    async def worker_names(self) -> frozenset[str]:
        identity = await self._rpc.identity()
        return frozenset(str(info.get("name", a)) for a, info in identity["workers"].items())

    async def retire(self, names: Collection[str]) -> frozenset[str]:
        if not names:
            return frozenset()
        reply = await asyncio.wait_for(
            self._rpc.retire_workers(names=list(names), close_workers=True, remove=True),
            self.retire_timeout,
        )
        return retired_names(reply)

    async def get_metadata(self, keys: list[str]) -> Any:
        """The scheduler's metadata under ``keys`` (``None`` when absent)."""
        return await self._rpc.get_metadata(keys=keys, default=None)

    async def set_metadata(self, keys: list[str], value: Any) -> None:
        """Store ``value`` in the scheduler's metadata under ``keys``."""
        await self._rpc.set_metadata(keys=keys, value=value)

    async def close(self) -> None:
        await self._rpc.close_rpc()  # type: ignore[no-untyped-call]


def resolve_address(settings: SchedulerSettings) -> str:
    """The scheduler address, read from the scheduler file when one is configured."""
    if settings.address is not None:
        return settings.address
    assert settings.scheduler_file is not None
    return str(json.loads(Path(settings.scheduler_file).read_text())["address"])


async def wait_for_address(settings: SchedulerSettings, timeout: float) -> str:
    """Like :func:`resolve_address`, but waits for a scheduler file that is not written yet.

    A scheduler started beside the scaler (one SLURM job, one pod) may write its file
    a few seconds after the scaler starts.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return resolve_address(settings)
        except (OSError, ValueError, KeyError) as error:
            if time.monotonic() > deadline:
                raise UserInputError(
                    f"scheduler.scheduler_file: no scheduler address in "
                    f"{settings.scheduler_file!r} after {timeout:g}s ({error})"
                ) from None
            await asyncio.sleep(0.5)


def connect(settings: SchedulerSettings, address: str | None = None) -> RpcScheduler:
    """An RPC link to the configured scheduler, with TLS when security is configured."""
    from distributed.security import Security

    if settings.security is not None:
        security = Security(  # type: ignore[no-untyped-call]
            tls_ca_file=settings.security.ca_file,
            tls_client_cert=settings.security.cert_file,
            tls_client_key=settings.security.key_file,
            require_encryption=True,
        )
    else:
        security = Security()  # type: ignore[no-untyped-call]
    connection_args = security.get_connection_args("client")  # type: ignore[no-untyped-call]
    return RpcScheduler(address or resolve_address(settings), connection_args=connection_args)
