"""Backends: one file each, one :class:`Backend` protocol, one sorted registry.

Third-party packages add a backend with an entry point in the group
``dask_deploy.backends`` whose object is a :class:`BackendFactory`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from .._registry import Registry
from ..contract import (
    Backend,
    BackendContext,
    BackendFactory,
    Instance,
    InstanceState,
    by_state,
    count_requested,
)

#: Built-in backends, sorted. Each module exposes ``create(context) -> Backend``.
#: Every key that has templates also has a folder of the same name under ``templates/``.
BUILTIN = {
    "command": "dask_deploy.backends.command:create",
    "docker": "dask_deploy.backends.docker:create",
    "fake": "dask_deploy.backends.fake:create",
    "htcondor": "dask_deploy.backends.htcondor:create",
    "kubernetes": "dask_deploy.backends.kubernetes:create",
    "local": "dask_deploy.backends.local:create",
    "lsf": "dask_deploy.backends.lsf:create",
    "marathon": "dask_deploy.backends.marathon:create",
    "pbs": "dask_deploy.backends.pbs:create",
    "sge": "dask_deploy.backends.sge:create",
    "slurm": "dask_deploy.backends.slurm:create",
    "ssh": "dask_deploy.backends.ssh:create",
}

#: Built-in backends without a ``templates/`` folder: there is nothing to deploy with them.
#: ``fake`` is the in-memory test double behind ``--dry-run``, and ``local`` starts workers as
#: processes beside the scaler itself. Every other key of BUILTIN has a template folder.
BACKENDS_WITHOUT_TEMPLATES = frozenset({"fake", "local"})

if TYPE_CHECKING:  # mypy checks each batch dialect module against the protocol it implements
    from . import htcondor, lsf, pbs, sge, slurm
    from .batch import Dialect

    _DIALECTS: tuple[Dialect, ...] = (htcondor, lsf, pbs, sge, slurm)

registry = Registry("backend", "dask_deploy.backends", BUILTIN)


def load_backend_factory(name: str, *, key: str = "backend.name") -> BackendFactory:
    return cast(BackendFactory, registry.load(name, key=key))


__all__ = [
    "BACKENDS_WITHOUT_TEMPLATES",
    "BUILTIN",
    "Backend",
    "BackendContext",
    "BackendFactory",
    "Instance",
    "InstanceState",
    "by_state",
    "count_requested",
    "load_backend_factory",
    "registry",
]
