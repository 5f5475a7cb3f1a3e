"""dask-deploy: readable Dask manifests for resource managers, and the scaler sidecar.

The plug-in contract (:mod:`dask_deploy.contract`) is importable from here: a backend
implements :class:`Backend`, a policy :class:`Policy`, and both are built by factories
registered as entry points (``dask_deploy.backends``, ``dask_deploy.policies``).
"""

from __future__ import annotations

from ._errors import SettingsError, UserInputError
from .contract import (
    Backend,
    BackendContext,
    BackendFactory,
    Decision,
    Hold,
    Instance,
    InstanceState,
    Numbers,
    Observation,
    Policy,
    PolicyFactory,
    PolicySettings,
    ScaleDown,
    ScaleUp,
    WorkerSnapshot,
    by_state,
    count_requested,
    describe,
)

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendContext",
    "BackendFactory",
    "Decision",
    "Hold",
    "Instance",
    "InstanceState",
    "Numbers",
    "Observation",
    "Policy",
    "PolicyFactory",
    "PolicySettings",
    "ScaleDown",
    "ScaleUp",
    "SettingsError",
    "UserInputError",
    "WorkerSnapshot",
    "__version__",
    "by_state",
    "count_requested",
    "describe",
]
