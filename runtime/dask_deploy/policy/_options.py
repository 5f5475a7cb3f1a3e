"""Validation of a policy's ``options`` mapping: every bad value names its key."""

from __future__ import annotations

from collections.abc import Mapping, Set

from .._errors import SettingsError

PREFIX = "policy.options"


def reject_unknown(options: Mapping[str, object], known: Set[str]) -> None:
    """Raise naming the first option that is not in ``known``."""
    for key in sorted(options):
        if key not in known:
            allowed = f"one of {', '.join(sorted(known))}" if known else "no options"
            raise SettingsError(f"{PREFIX}.{key}", options[key], allowed)


def number(
    options: Mapping[str, object],
    key: str,
    default: float,
    *,
    at_least: float,
    above: bool = False,
    at_most: float | None = None,
) -> float:
    """A float option within bounds (``above`` makes the lower bound exclusive)."""
    value = options.get(key, default)
    lower = f"> {at_least}" if above else f">= {at_least}"
    upper = f" and <= {at_most}" if at_most is not None else ""
    allowed = f"a number {lower}{upper}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingsError(f"{PREFIX}.{key}", value, allowed)
    too_low = value <= at_least if above else value < at_least
    if too_low or (at_most is not None and value > at_most):
        raise SettingsError(f"{PREFIX}.{key}", value, allowed)
    return float(value)


def integer(options: Mapping[str, object], key: str, default: int, *, at_least: int) -> int:
    """An integer option ``>= at_least``."""
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < at_least:
        raise SettingsError(f"{PREFIX}.{key}", value, f"an integer >= {at_least}")
    return value
