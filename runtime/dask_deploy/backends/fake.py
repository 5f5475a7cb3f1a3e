"""An in-memory backend: the test double behind ``--dry-run`` and the unit tests.

Like httpx's ``MockTransport`` it ships in the package so users can test their
own policies and configurations without a resource manager. Instances are named
``<deployment>-<index>`` and stay ``pending`` until a test calls
:meth:`FakeBackend.set_state`; nothing is started.

Options: ``fail`` (optional, list of method names: each call of such a method
raises ``ConnectionError``, to exercise the loop's backoff).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from .._errors import SettingsError
from ..contract import BackendContext, Instance, InstanceState, count_requested
from ..options import BACKEND_OPTIONS, reject_unknown

_METHODS = ("instances", "scale_down", "scale_up")


class FakeBackend:
    """Keeps instances in a dict; records every call in :attr:`calls`."""

    def __init__(
        self,
        deployment: str = "fake",
        *,
        clock: Callable[[], float] = time.time,
        fail: Collection[str] = (),
    ) -> None:
        self.deployment = deployment
        self.clock = clock
        self.fail = set(fail)
        self.calls: list[tuple[str, object]] = []
        self._instances: dict[str, Instance] = {}
        self._next_index = 0

    def _call(self, method: str, argument: object) -> None:
        self.calls.append((method, argument))
        if method in self.fail:
            raise ConnectionError(f"fake backend: {method} fails as configured")

    async def scale_up(self, n: int) -> None:
        self._call("scale_up", n)
        while count_requested(list(self._instances.values())) < n:
            name = f"{self.deployment}-{self._next_index}"
            self._next_index += 1
            self._instances[name] = Instance(name, InstanceState.PENDING, self.clock())

    async def scale_down(self, names: Collection[str]) -> None:
        self._call("scale_down", sorted(names))
        for name in names:
            self._instances.pop(name, None)

    async def instances(self) -> list[Instance]:
        self._call("instances", None)
        return list(self._instances.values())

    async def close(self) -> None:
        self.calls.append(("close", None))

    def set_state(self, name: str, state: InstanceState) -> None:
        """Move an instance to ``state`` (as the resource manager would)."""
        instance = self._instances[name]
        self._instances[name] = Instance(name, state, instance.requested_at)

    def set_reason(self, name: str, reason: str | None) -> None:
        """Say why a pending instance cannot start (``None``: nothing holds it back)."""
        instance = self._instances[name]
        self._instances[name] = Instance(name, instance.state, instance.requested_at, reason)

    def add(self, name: str, state: InstanceState, requested_at: float) -> None:
        """Pretend the resource manager already holds this instance."""
        self._instances[name] = Instance(name, state, requested_at)


def create(context: BackendContext) -> FakeBackend:
    """A fresh fake backend for ``context.deployment``."""
    fail = context.options.get("fail", [])
    reject_unknown(context.options, {"fail"}, prefix=BACKEND_OPTIONS)
    if not isinstance(fail, list) or not set(fail) <= set(_METHODS):
        raise SettingsError("backend.options.fail", fail, f"a list of {', '.join(_METHODS)}")
    return FakeBackend(context.deployment, fail=[str(m) for m in fail])
