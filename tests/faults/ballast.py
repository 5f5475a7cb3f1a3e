"""Results that are slow to move: one stands for a worker holding a lot of data.

Importable by the workers (the local fault run puts tests/faults on their PYTHONPATH). The
result pickles into plain standard-library calls, so the worker receiving it needs nothing
from here: unpickling sleeps ``seconds``, then yields the value. A retirement that must move
one therefore lasts that long, with the scheduler showing the worker closing_gracefully.
"""

from __future__ import annotations

import operator
import time


class _Pause:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self) -> tuple[object, tuple[float]]:
        return (time.sleep, (self.seconds,))


class _SlowToMove:
    def __init__(self, value: int, seconds: float) -> None:
        self.value = value
        self.seconds = seconds

    def __reduce__(self) -> tuple[object, tuple[object, int]]:
        return (operator.getitem, ((_Pause(self.seconds), self.value), 1))


def heavy(value: int, seconds: float) -> object:
    """A result that takes ``seconds`` to arrive on another worker (then it is ``value``)."""
    return _SlowToMove(value, seconds)
