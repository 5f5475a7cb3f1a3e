"""The conformance checks catch the backends that break a promise (tested on broken fakes)."""

from __future__ import annotations

import uuid
from collections.abc import Collection

import pytest

from dask_deploy import Instance, InstanceState
from dask_deploy.backends.fake import FakeBackend
from dask_deploy.testing.conformance import CHECKS, ConformanceError, Subject, run_all


class LowersOnScaleUp(FakeBackend):
    """Treats ``scale_up(n)`` as "exactly n": removes instances above n."""

    async def scale_up(self, n: int) -> None:
        listed = sorted(i.name for i in await self.instances())
        if len(listed) > n:
            await self.scale_down(listed[n:])
        await super().scale_up(n)


class RemovesOneMore(FakeBackend):
    async def scale_down(self, names: Collection[str]) -> None:
        listed = sorted(i.name for i in await self.instances())
        extra = [n for n in listed if n not in names][:1] if names else []
        await super().scale_down([*names, *extra])


class FailsOnUnknownNames(FakeBackend):
    async def scale_down(self, names: Collection[str]) -> None:
        known = {i.name for i in await self.instances()}
        if set(names) - known:
            raise KeyError(sorted(set(names) - known))
        await super().scale_down(names)


class ListsPendingAsRunning(FakeBackend):
    async def instances(self) -> list[Instance]:
        return [
            Instance(i.name, InstanceState.RUNNING, i.requested_at)
            for i in await super().instances()
        ]


class RelaunchesOnScaleUp(FakeBackend):
    """Forgets what it launched: every ``scale_up(n)`` launches ``n`` more."""

    async def scale_up(self, n: int) -> None:
        for _ in range(n):
            self.add(f"{self.deployment}-{uuid.uuid4().hex[:8]}", InstanceState.PENDING, 0.0)


@pytest.mark.parametrize(
    ("backend_type", "broken"),
    [
        (LowersOnScaleUp, "scale_up_never_lowers"),
        (RemovesOneMore, "scale_down_removes_exactly_the_named_instances"),
        (FailsOnUnknownNames, "unknown_names_are_ignored_by_scale_down"),
        (ListsPendingAsRunning, "pending_instances_are_listed_as_pending"),
        (RelaunchesOnScaleUp, "a_retried_call_is_harmless"),
    ],
)
async def test_a_broken_backend_fails_the_check_of_the_promise_it_breaks(
    backend_type: type[FakeBackend], broken: str
) -> None:
    subject = Subject(backend_type("c"), settle=1.0, watch=0.2, hold_pending=_already_pending)
    with pytest.raises((ConformanceError, KeyError)):
        await CHECKS[broken](subject)


async def test_the_fake_backend_passes_them_all() -> None:
    await run_all(Subject(FakeBackend("c"), settle=1.0, watch=0.2, hold_pending=_already_pending))


class _AlreadyPending:
    """The fake backend never starts an instance by itself: holding it needs nothing."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *_: object) -> None:
        return None


def _already_pending() -> _AlreadyPending:
    return _AlreadyPending()
