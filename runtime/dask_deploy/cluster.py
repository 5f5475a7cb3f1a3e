"""``DeployCluster``: a deployment of dask-deploy as a ``distributed`` cluster object.

The scheduler and its scaler run on the resource manager, not in this process, so the
deployment outlives the notebook that started it: ``DeployCluster.from_name`` reattaches
from anywhere that can read the deployment's folder. ``adapt()`` and ``scale()`` change
the running scaler's policy through the scheduler (see :mod:`dask_deploy.channel`).

>>> from dask_deploy import DeployCluster                     # doctest: +SKIP
>>> from distributed import Client                            # doctest: +SKIP
>>> with DeployCluster("local") as cluster:                   # doctest: +SKIP
...     cluster.adapt(minimum=0, maximum=4)
...     client = Client(cluster)
...     client.submit(sum, [1, 2]).result()
3
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Generator, Mapping, Sequence
from typing import Any

from distributed.core import Status, rpc
from distributed.deploy.cluster import Cluster

from . import lifecycle
from .channel import new_request_id, policy_as_dict, request_key, validate_request
from .lifecycle import DeploymentRecord


class DeployCluster(Cluster):
    """A Dask cluster whose scheduler and scaler run on a resource manager.

    ``backend`` names the resource manager (``local`` starts processes on this machine);
    ``values`` is a values file or mapping over the backend's defaults and ``set`` a list
    of ``key.path=value`` overrides, exactly as ``dask-deploy render`` takes them.
    ``name`` names the deployment (default ``dask-`` and 8 hex digits).

    ``close()`` (and leaving a ``with`` block) retires every worker through the scaler,
    then stops the scaler and the scheduler; a cluster attached with :meth:`from_name`
    only disconnects, unless ``shutdown_on_close=True`` or :meth:`shutdown` is called.
    """

    def __init__(
        self,
        backend: str,
        values: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        set: Sequence[str] = (),
        name: str | None = None,
        *,
        timeout: float = 120.0,
        shutdown_on_close: bool = True,
        asynchronous: bool = False,
        loop: Any = None,
        _record: DeploymentRecord | None = None,
    ) -> None:
        if _record is None:
            name = lifecycle.check_name(name) if name is not None else lifecycle.new_name()
        else:
            name = _record.name
        super().__init__(asynchronous=asynchronous, loop=loop, name=name)  # type: ignore[no-untyped-call]
        self.backend = backend
        self._values = values
        self._sets = tuple(set)
        self._timeout = timeout
        self._record = _record
        self.shutdown_on_close = shutdown_on_close
        self._policy: dict[str, Any] | None = None
        if _record is None:
            # Check the values before anything starts, so bad input raises here, in one line.
            folder = lifecycle.state_root() / name
            lifecycle.make_launcher(backend, name, values, self._sets, folder)
        if not self.asynchronous:
            self._loop_runner.start()  # type: ignore[no-untyped-call]
            try:
                self.sync(self._start)  # type: ignore[no-untyped-call]
            except BaseException:
                # Nothing runs any more (up stopped what it had started): the error is the
                # whole story, not followed by an "unclosed cluster" warning at exit.
                self.status = Status.closed
                self._loop_runner.stop()  # type: ignore[no-untyped-call]
                raise

    @classmethod
    def from_name(
        cls,
        name: str,
        backend: str | None = None,
        *,
        shutdown_on_close: bool = False,
        asynchronous: bool = False,
        loop: Any = None,
    ) -> DeployCluster:
        """Attach to the running deployment ``name`` (started by this or another process)."""
        record = DeploymentRecord.load(name)
        if backend is not None and backend != record.backend:
            from ._errors import SettingsError

            raise SettingsError(
                "backend", backend, f"{record.backend!r}, the backend {name!r} runs on"
            )
        return cls(
            record.backend,
            shutdown_on_close=shutdown_on_close,
            asynchronous=asynchronous,
            loop=loop,
            _record=record,
        )

    async def _start(self) -> None:
        if self._record is None:
            self._record = await asyncio.to_thread(
                lifecycle.up,
                self.backend,
                self._values,
                self._sets,
                self.name,
                timeout=self._timeout,
            )
        record = self._record
        assert record.scheduler_address is not None
        self.scheduler_comm = rpc(record.scheduler_address)  # type: ignore[no-untyped-call]
        try:
            await super()._start()  # type: ignore[no-untyped-call]
        except BaseException:
            await self._comm.close_rpc()
            if self.shutdown_on_close:
                await asyncio.to_thread(lifecycle.down, record)
            raise
        self._cluster_info["backend"] = record.backend

    def __await__(self) -> Generator[Any, None, DeployCluster]:
        # `await cluster` / `async with` starts an asynchronous cluster (the base does not).
        async def started() -> DeployCluster:
            if self.status.name == "created":
                await self._start()
            return self

        return started().__await__()

    @property
    def _comm(self) -> Any:
        """The scheduler RPC (set once started)."""
        assert self.scheduler_comm is not None
        return self.scheduler_comm

    # ----------------------------------------------------------------- the scaler's policy

    def adapt(  # type: ignore[override]
        self, minimum: int = 0, maximum: int | None = None, **policy_options: Any
    ) -> Any:
        """Let the running scaler follow the load between ``minimum`` and ``maximum`` workers.

        ``policy_options`` are the adaptive policy's options (docs/scaler-config.md), for
        example ``scale_down_window=30``. ``maximum`` defaults to the current maximum. An
        invalid request raises :class:`~dask_deploy.SettingsError` here, with the line the
        scaler would print for the same ``policy`` section of ``scaler.yaml``. With
        ``asynchronous=True`` it returns an awaitable.
        """
        if maximum is None:
            current = self._current_policy()
            maximum = max(minimum, int(current["maximum"])) if current else max(minimum, 1)
        return self._request(
            {"name": "adaptive", "minimum": minimum, "maximum": maximum, "options": policy_options}
        )

    def scale(self, n: int) -> Any:
        """Keep exactly ``n`` workers (the ``fixed`` policy), whatever the load."""
        return self._request({"name": "fixed", "minimum": n, "maximum": n, "options": {}})

    def _request(self, section: Mapping[str, Any]) -> Any:
        validated = validate_request(section)  # raises before anything is sent
        policy = policy_as_dict(validated)
        self._policy = policy
        request = {"id": new_request_id(), "policy": policy}
        return self.sync(self._send_request, request)  # type: ignore[no-untyped-call]

    async def _send_request(self, request: Mapping[str, Any]) -> None:
        await self._comm.set_metadata(keys=request_key(self.name), value=dict(request))

    def _current_policy(self) -> dict[str, Any] | None:
        if self._policy is not None:
            return self._policy
        if not self.asynchronous:
            status = self.scaler_status()
            policy = status.get("policy") if status else None
            if isinstance(policy, Mapping):
                return dict(policy)
        if self._record is None:
            return None
        return policy_as_dict(self._record.scaler_config().policy)  # as launched

    # ----------------------------------------------------------------- what it is doing

    def scaler_status(self) -> Any:
        """What the scaler last published: policy, target, instances, last decisions.

        ``None`` until the scaler has finished its first tick. The fields are documented in
        docs/python-api.md. With ``asynchronous=True`` it returns an awaitable.
        """
        return self.sync(self._scaler_status)  # type: ignore[no-untyped-call]

    async def _scaler_status(self) -> dict[str, Any] | None:
        return await lifecycle.published_status(self._comm, self.name)

    def manifests(self) -> dict[str, str]:
        """The files the deployment was launched from (``{file name: text}``)."""
        assert self._record is not None
        return lifecycle.manifests_of(self._record)

    @property
    def record(self) -> DeploymentRecord:
        """Where the deployment's files and logs are, and what was launched."""
        assert self._record is not None
        return self._record

    # ----------------------------------------------------------------- closing

    async def _close(self) -> None:
        if self.status.name == "closed":
            return
        record = self._record
        if self.shutdown_on_close and record is not None and self.scheduler_comm is not None:
            await lifecycle.retire_all(self._comm, self.name)
        await super()._close()  # type: ignore[no-untyped-call]
        if self.shutdown_on_close and record is not None:
            await asyncio.to_thread(lifecycle.down, record)

    def shutdown(self) -> Any:
        """Take the deployment down (retire the workers, stop the scaler and scheduler)."""
        self.shutdown_on_close = True
        return self.close()
