"""Watch a deployment through a fault: ticks until in bounds, seconds outside bounds.

Backend-neutral: the caller supplies how to count live instances (from the resource
manager) and how to read the scaler's tick counter (its Prometheus endpoint).
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tally import MAX_TICKS_TO_BOUNDS

_TICKS = re.compile(r"^dask_deploy_ticks_total\s+([0-9.e+]+)\s*$", re.MULTILINE)


def fixed_policy(workers: int, minimum: int, maximum: int) -> dict[str, Any]:
    """The scaler configuration's ``policy``: the fixed policy, asking for ``workers``."""
    return {
        "name": "fixed",
        "minimum": minimum,
        "maximum": maximum,
        "options": {"workers": workers},
    }


def scaler_ticks(metrics_port: int) -> int:
    """Loop iterations the scaler on ``metrics_port`` has finished; 0 while it is not up."""
    try:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except (OSError, urllib.error.URLError):
        return 0
    match = _TICKS.search(text)
    return int(float(match.group(1))) if match else 0


@dataclass
class BoundsWatch:
    """Polls the live-instance count; knows how long it was outside and how many ticks it took."""

    minimum: int
    maximum: int
    live_instances: Callable[[], int]
    ticks: Callable[[], int]

    def __post_init__(self) -> None:
        self.seconds_outside = 0.0
        self._last = time.monotonic()

    def in_bounds(self) -> bool:
        """One poll: count, and add the time since the last poll if the count is outside."""
        now = time.monotonic()
        inside = self.minimum <= self.live_instances() <= self.maximum
        if not inside:
            self.seconds_outside += now - self._last
        self._last = now
        return inside

    def ticks_to_bounds(
        self, timeout: float, describe: Callable[[], str], limit: int = MAX_TICKS_TO_BOUNDS
    ) -> int:
        """From now (the fault is over): scaler ticks until the count is back in bounds.

        Raises AssertionError (with ``describe()``, e.g. log tails) when it takes more than
        ``limit`` ticks or ``timeout`` seconds. The limit is ``MAX_TICKS_TO_BOUNDS`` for a
        backend that lists its instances every tick; one that lists them less often (a batch
        backend's ``status_interval``) sees a fault only at its next listing, so its limit adds
        the ticks of one status interval.
        """
        start = self.ticks()
        deadline = time.monotonic() + timeout
        while not self.in_bounds():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the count stayed outside [{self.minimum}, {self.maximum}] for "
                    f"{timeout} s after the fault was over\n{describe()}"
                )
            time.sleep(0.05)
        taken = self.ticks() - start
        assert taken <= limit, (
            f"back within [{self.minimum}, {self.maximum}] only after {taken} scaler ticks "
            f"(limit {limit})\n{describe()}"
        )
        return taken


def scaler_metrics_up(metrics_port: int) -> bool:
    """Whether the scaler on ``metrics_port`` serves its metrics (its process is up and ticking)."""
    try:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(_TICKS.search(response.read().decode()))
    except (OSError, urllib.error.URLError):
        return False
