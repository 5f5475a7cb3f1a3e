"""dask-deploy: readable Dask manifests for resource managers, and the scaler sidecar."""

from __future__ import annotations

from ._errors import SettingsError, UserInputError
from .backends import Backend, BackendContext, Instance, InstanceState

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendContext",
    "Instance",
    "InstanceState",
    "SettingsError",
    "UserInputError",
    "__version__",
]
