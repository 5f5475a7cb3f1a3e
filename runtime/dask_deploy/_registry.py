"""Named plug-ins: the built-in ones plus those other packages declare as entry points."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points

from ._errors import SettingsError


def _load_reference(reference: str) -> object:
    module_name, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


class Registry:
    """A sorted map from name to a lazily imported factory.

    Built-ins are given as ``"module:attribute"`` strings so that an optional
    client library (``marathon``, ``kubernetes``, ``docker``) is imported only
    when its backend is used. Third-party packages add entries under the entry
    point ``group``; a built-in name cannot be shadowed.
    """

    def __init__(self, kind: str, group: str, builtin: Mapping[str, str]) -> None:
        self.kind = kind
        self.group = group
        self.builtin = dict(sorted(builtin.items()))

    def names(self) -> list[str]:
        plugins = {entry.name for entry in entry_points(group=self.group)}
        return sorted(set(self.builtin) | plugins)

    def load(self, name: str, *, key: str) -> object:
        """The factory registered as ``name``; ``key`` is the setting that named it."""
        if name in self.builtin:
            return _load_reference(self.builtin[name])
        for entry in entry_points(group=self.group):
            if entry.name == name:
                return entry.load()
        raise SettingsError(key, name, f"one of the {self.kind}s {', '.join(self.names())}")
