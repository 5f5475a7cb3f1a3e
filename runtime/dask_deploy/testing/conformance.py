"""Checks every backend must pass, ours and third parties': the promises of the Backend protocol.

The control loop relies on these promises; a backend that breaks one can lose workers' data or
leak instances, whatever the loop enforces. Run them against your backend from your own tests::

    import pytest
    from dask_deploy.testing.conformance import CHECKS, Subject

    @pytest.mark.parametrize("check", CHECKS.values(), ids=CHECKS.keys())
    async def test_my_backend_conforms(check, tmp_path):
        backend = my_backend.create(BackendContext("conformance", "tcp://127.0.0.1:1", {...}))
        try:
            await check(Subject(backend))
        finally:
            await backend.close()

Each check starts by removing whatever instances the deployment still has, then works with
up to three instances. Changes may take effect asynchronously: a check waits (polling
``instances()``) up to ``Subject.settle`` seconds for them, and watches ``Subject.watch``
seconds to see that nothing else happens (no replacement launched, nothing else removed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from ..contract import Backend, Instance, InstanceState

__all__ = [
    "CHECKS",
    "ConformanceError",
    "Subject",
    "a_retried_call_is_harmless",
    "pending_instances_are_listed_as_pending",
    "run_all",
    "scale_down_removes_exactly_the_named_instances",
    "scale_up_never_lowers",
    "unknown_names_are_ignored_by_scale_down",
]


class ConformanceError(AssertionError):
    """A backend broke a promise of the contract; the message says which and what was seen."""


@dataclass(frozen=True)
class Subject:
    """A backend under test, with what the checks need to know about its resource manager."""

    backend: Backend
    settle: float = 30.0
    """Seconds a scale-up or scale-down may take to show in ``instances()``."""
    watch: float = 1.0
    """Seconds a check keeps looking to be sure nothing else changes after a call."""
    hold_pending: Callable[[], AbstractAsyncContextManager[None]] | None = None
    """While entered, the resource manager accepts new instances but does not start them
    (no free node, a held job). ``None`` when it cannot be made to: the pending check then
    only asserts that nothing is listed as exited right after a scale-up."""


def _requested(instances: list[Instance]) -> list[str]:
    return sorted(i.name for i in instances if i.state is not InstanceState.EXITED)


async def _until(
    subject: Subject, what: str, done: Callable[[list[Instance]], bool]
) -> list[Instance]:
    """``instances()`` once ``done`` holds for it; raise naming ``what`` after ``settle``."""
    deadline = time.monotonic() + subject.settle
    while True:
        instances = await subject.backend.instances()
        if done(instances):
            return instances
        if time.monotonic() > deadline:
            raise ConformanceError(f"{what}: not within {subject.settle:g}s; listed {instances}")
        await asyncio.sleep(0.1)


async def _stays(subject: Subject, what: str, holds: Callable[[list[Instance]], bool]) -> None:
    """Raise naming ``what`` if ``holds`` stops holding within ``watch`` seconds."""
    deadline = time.monotonic() + subject.watch
    while time.monotonic() <= deadline:
        instances = await subject.backend.instances()
        if not holds(instances):
            raise ConformanceError(f"{what}; listed {instances}")
        await asyncio.sleep(0.1)


async def _start_empty(subject: Subject) -> None:
    names = _requested(await subject.backend.instances())
    if names:
        await subject.backend.scale_down(names)
    await _until(subject, "removing every instance before the check", lambda i: not _requested(i))


async def _requested_count(subject: Subject, n: int) -> list[str]:
    instances = await _until(subject, f"{n} instances requested", lambda i: len(_requested(i)) == n)
    return _requested(instances)


async def scale_up_never_lowers(subject: Subject) -> None:
    """``scale_up(n)`` with ``n`` at or below what is requested changes nothing."""
    await _start_empty(subject)
    await subject.backend.scale_up(2)
    names = await _requested_count(subject, 2)
    for n in (1, 0, 2):
        await subject.backend.scale_up(n)
        await _stays(
            subject,
            f"scale_up({n}) with 2 requested changed the instances {names}",
            lambda i: _requested(i) == names,
        )


async def unknown_names_are_ignored_by_scale_down(subject: Subject) -> None:
    """``scale_down`` of names the backend does not know neither fails nor removes anything."""
    await _start_empty(subject)
    await subject.backend.scale_up(1)
    names = await _requested_count(subject, 1)
    await subject.backend.scale_down(["conformance-no-such-instance", f"{names[0]}-not"])
    await _stays(
        subject,
        f"scale_down of unknown names changed the instances {names}",
        lambda i: _requested(i) == names,
    )


async def scale_down_removes_exactly_the_named_instances(subject: Subject) -> None:
    """``scale_down([a])`` removes ``a`` and nothing else, and nothing replaces it."""
    await _start_empty(subject)
    await subject.backend.scale_up(3)
    victim, *kept = await _requested_count(subject, 3)
    await subject.backend.scale_down([victim])
    await _until(subject, f"{victim} removed", lambda i: victim not in _requested(i))
    await _stays(
        subject,
        f"after scale_down([{victim!r}]) the others must be exactly {kept}",
        lambda i: _requested(i) == kept,
    )


async def pending_instances_are_listed_as_pending(subject: Subject) -> None:
    """An instance the resource manager holds but has not started is listed, as ``PENDING``."""
    await _start_empty(subject)
    if subject.hold_pending is None:
        await subject.backend.scale_up(2)
        instances = await subject.backend.instances()
        exited = [i for i in instances if i.state is InstanceState.EXITED]
        if exited:
            raise ConformanceError(f"freshly requested instances listed as exited: {exited}")
        await _requested_count(subject, 2)
        return
    async with subject.hold_pending():
        await subject.backend.scale_up(2)
        names = await _requested_count(subject, 2)
        listed = await subject.backend.instances()
        states = {i.name: i.state for i in listed if i.name in names}
        if any(state is not InstanceState.PENDING for state in states.values()):
            raise ConformanceError(f"instances held by the resource manager not pending: {states}")
        await subject.backend.scale_down(names[:1])  # cancelling one that never started
        await _until(subject, f"{names[0]} cancelled", lambda i: _requested(i) == names[1:])


async def a_retried_call_is_harmless(subject: Subject) -> None:
    """Repeating ``scale_up(n)`` or ``scale_down(names)`` (a retry after a timeout) does nothing."""
    await _start_empty(subject)
    await subject.backend.scale_up(3)
    await subject.backend.scale_up(3)
    victim, *kept = await _requested_count(subject, 3)
    await _stays(subject, "a repeated scale_up(3) launched more", lambda i: len(_requested(i)) == 3)
    await subject.backend.scale_down([victim])
    await subject.backend.scale_down([victim])
    await _until(subject, f"{victim} removed", lambda i: victim not in _requested(i))
    await subject.backend.scale_down([victim])
    await _stays(
        subject,
        f"a repeated scale_down([{victim!r}]) must leave exactly {kept}",
        lambda i: _requested(i) == kept,
    )


#: Every check by name, in a stable order (for ``pytest.mark.parametrize``).
CHECKS: Mapping[str, Callable[[Subject], Awaitable[None]]] = {
    check.__name__: check
    for check in (
        scale_up_never_lowers,
        unknown_names_are_ignored_by_scale_down,
        scale_down_removes_exactly_the_named_instances,
        pending_instances_are_listed_as_pending,
        a_retried_call_is_harmless,
    )
}


async def run_all(subject: Subject) -> None:
    """Every check, one after the other, on the same backend."""
    for check in CHECKS.values():
        await check(subject)
