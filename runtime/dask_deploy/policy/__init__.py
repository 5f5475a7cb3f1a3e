"""Policies: pure decisions of *when* to scale and *which* workers to release.

A policy is built by a :class:`PolicyFactory` from :class:`PolicySettings` and
answers ``decide(observation, now)`` with :class:`ScaleUp`, :class:`ScaleDown`
or :class:`Hold`. Third-party packages add a policy with an entry point in the
group ``dask_deploy.policies`` whose object is a :class:`PolicyFactory`.

>>> policy = load_policy_factory("fixed")(PolicySettings(minimum=2, maximum=4))
>>> empty = Observation(workers=(), instances=(), adaptive_target=0, tasks_processing=0)
>>> describe(policy.decide(empty, now=0.0))
'scale up to 2: fixed at 2 [target=2 requested=0 observed=0 pending=0]'
"""

from __future__ import annotations

from typing import cast

from .._registry import Registry
from ..contract import (
    Decision,
    Hold,
    Numbers,
    Observation,
    Policy,
    PolicyFactory,
    PolicySettings,
    ScaleDown,
    ScaleUp,
    WorkerSnapshot,
    describe,
)

#: Built-in policies, sorted. Each module exposes ``create(settings) -> Policy``.
BUILTIN = {
    "adaptive": "dask_deploy.policy.adaptive:create",
    "fixed": "dask_deploy.policy.fixed:create",
}

registry = Registry("policy", "dask_deploy.policies", BUILTIN)


def load_policy_factory(name: str, *, key: str = "policy.name") -> PolicyFactory:
    """The factory registered as ``name``; an unknown name raises ``SettingsError`` for ``key``."""
    return cast(PolicyFactory, registry.load(name, key=key))


__all__ = [
    "BUILTIN",
    "Decision",
    "Hold",
    "Numbers",
    "Observation",
    "Policy",
    "PolicyFactory",
    "PolicySettings",
    "ScaleDown",
    "ScaleUp",
    "WorkerSnapshot",
    "describe",
    "load_policy_factory",
    "registry",
]
