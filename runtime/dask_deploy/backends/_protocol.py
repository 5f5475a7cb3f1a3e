"""The one interface every backend implements.

A backend knows *how* to start and stop workers on one resource manager and
nothing of *when*: the policy decides that, the control loop joins the two.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class InstanceState(enum.Enum):
    """Where an instance is in its life, as the resource manager reports it."""

    PENDING = "pending"
    RUNNING = "running"
    EXITED = "exited"


@dataclass(frozen=True)
class Instance:
    """One worker the backend launched.

    ``name`` is the resource manager's own id (Marathon task id, pod name, SLURM
    job id, container name) and is also the name the Dask worker registers
    with, so the scaler can retire exactly the worker whose instance it removes.
    """

    name: str
    state: InstanceState
    requested_at: float
    """Unix time at which the backend asked the resource manager for it."""
    reason: str | None = None
    """Why a pending instance cannot start, in the resource manager's words (as
    cluster-autoscaler's ``ErrorInfo``), e.g. ``Unschedulable: 0/1 nodes are available: 1
    Insufficient cpu.``; ``None`` while nothing is known to hold it back. The loop does not
    replace such an instance at ``startup_timeout`` (a copy would be stuck the same way), and
    holds scale-ups while any is stuck."""


@dataclass(frozen=True)
class BackendContext:
    """What the control loop hands a backend factory.

    ``options`` is the backend's own section of the scaler configuration; the
    factory validates it and raises :class:`dask_deploy.SettingsError` naming
    the offending key.
    """

    deployment: str
    scheduler_address: str
    options: Mapping[str, object] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """How to start, stop and list the workers of one deployment."""

    async def scale_up(self, n: int) -> None:
        """Bring the number of requested (pending or running) instances up to ``n``.

        Never lowers the count: with ``n`` at or below what is requested it does nothing.
        """

    async def scale_down(self, names: Collection[str]) -> None:
        """Remove exactly the instances with these names, and nothing else.

        Names the backend does not know are ignored, so a retried call is harmless.
        """

    async def instances(self) -> list[Instance]:
        """Every instance of this deployment that the resource manager still reports."""

    async def close(self) -> None:
        """Release clients and connections; leaves running instances alone."""


class BackendFactory(Protocol):
    def __call__(self, context: BackendContext) -> Backend: ...


def count_requested(instances: Collection[Instance]) -> int:
    """Pending and running instances: what the resource manager is holding for us."""
    return sum(1 for instance in instances if instance.state is not InstanceState.EXITED)


def by_state(instances: Collection[Instance]) -> Mapping[InstanceState, list[Instance]]:
    grouped: dict[InstanceState, list[Instance]] = {state: [] for state in InstanceState}
    for instance in instances:
        grouped[instance.state].append(instance)
    return grouped
