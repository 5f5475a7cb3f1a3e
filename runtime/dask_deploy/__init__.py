"""dask-deploy: readable Dask manifests for resource managers, and the scaler sidecar.

The public face: :class:`DeployCluster` (a ``distributed`` cluster whose scheduler and
scaler run on a resource manager), :func:`render_files` and :func:`resolve_values` (what
``dask-deploy render`` does), the backend and policy registries, and the contract types a
plug-in author implements.

>>> from dask_deploy import resolve_values, render_files
>>> sorted(render_files(resolve_values("slurm")))[:2]
['scaler-config.yaml', 'scheduler-job.sh']

The plug-in contract (:mod:`dask_deploy.contract`) is importable from here: a backend
implements :class:`Backend`, a policy :class:`Policy`, and both are built by factories
registered as entry points (``dask_deploy.backends``, ``dask_deploy.policies``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._errors import SettingsError, UserInputError
from .backends import registry as backend_registry
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
    ReasonKind,
    ScaleDown,
    ScaleUp,
    WorkerSnapshot,
    by_state,
    count_requested,
    describe,
)
from .policy import registry as policy_registry

if TYPE_CHECKING:
    from .cluster import DeployCluster
    from .render import render_files
    from .values import resolve_values

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Imported on first use. DeployCluster imports distributed, which `dask-deploy render`
    # should not pay for; rendering imports jinja2, yaml and jsonschema, which the worker image
    # lacks: it carries dask-deploy only for `--preload dask_deploy.worker_preload`, and
    # importing a submodule runs this file first.
    if name == "DeployCluster":
        from .cluster import DeployCluster

        return DeployCluster
    if name == "render_files":
        from .render import render_files

        return render_files
    if name == "resolve_values":
        from .values import resolve_values

        return resolve_values
    raise AttributeError(f"module 'dask_deploy' has no attribute {name!r}")


__all__ = [
    "Backend",
    "BackendContext",
    "BackendFactory",
    "Decision",
    "DeployCluster",
    "Hold",
    "Instance",
    "InstanceState",
    "Numbers",
    "Observation",
    "Policy",
    "PolicyFactory",
    "PolicySettings",
    "ReasonKind",
    "ScaleDown",
    "ScaleUp",
    "SettingsError",
    "UserInputError",
    "WorkerSnapshot",
    "__version__",
    "backend_registry",
    "by_state",
    "count_requested",
    "describe",
    "policy_registry",
    "render_files",
    "resolve_values",
]
