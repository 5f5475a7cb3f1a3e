"""The scaler configuration (``scaler.yaml``, see docs/scaler-config.md), loaded and validated.

The running scaler loads it again when the file changes (:class:`dask_deploy.scaler.ConfigSource`).

:func:`load_config` reads the file named by ``--config`` or, without it, the YAML
text in the environment variable ``DASK_DEPLOY_SCALER_CONFIG``; command-line
overrides are applied to that mapping before it is validated, so a bad flag is
reported under the key it sets. The mapping is checked against ``scaler.schema.json``
through :func:`dask_deploy.options.validate`, the same one-line errors as the values
files: every problem names the key, the value and what is allowed.

Defaults: every key of ``policy``, ``loop``, ``deployment`` and the ``options``
mappings may be left out (values as in the documentation's example); the
scheduler address (or file) and ``backend.name`` must be given.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ._errors import SettingsError, UserInputError
from .options import validate

ENV_VAR = "DASK_DEPLOY_SCALER_CONFIG"
SCHEMA_FILE = Path(__file__).with_name("scaler.schema.json")


@dataclass(frozen=True)
class SecuritySettings:
    """TLS files for ``tls://`` scheduler addresses."""

    ca_file: str
    cert_file: str
    key_file: str


@dataclass(frozen=True)
class SchedulerSettings:
    """Where the scheduler is and how to reach it."""

    address: str | None = None
    scheduler_file: str | None = None
    security: SecuritySettings | None = None


@dataclass(frozen=True)
class PolicyConfig:
    """Which policy decides and its bounds."""

    name: str = "adaptive"
    minimum: int = 0
    maximum: int = 10
    options: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class LoopSettings:
    """How the control loop ticks."""

    interval: float = 1.0
    startup_timeout: float = 300.0
    cleanup_on_exit: bool = False


@dataclass(frozen=True)
class MetricsSettings:
    """Where the Prometheus endpoint listens."""

    host: str = "127.0.0.1"
    port: int = 9090


@dataclass(frozen=True)
class BackendConfig:
    """Which backend acts and its own options."""

    name: str
    options: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class ScalerConfig:
    """The whole, validated scaler configuration."""

    deployment: str
    scheduler: SchedulerSettings
    policy: PolicyConfig
    loop: LoopSettings
    metrics: MetricsSettings | None
    backend: BackendConfig


def read_raw(path: Path | None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The mapping in ``path``, else in ``$DASK_DEPLOY_SCALER_CONFIG``, else ``{}``."""
    environ = os.environ if environ is None else environ
    if path is not None:
        try:
            text = path.read_text()
        except OSError as error:
            raise UserInputError(f"--config: cannot read {str(path)!r}: {error.strerror}") from None
        source = str(path)
    elif environ.get(ENV_VAR):
        text, source = environ[ENV_VAR], ENV_VAR
    else:
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise UserInputError(f"{source}: not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError("(top level)", data, "a mapping of settings")
    return data


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, object]) -> dict[str, Any]:
    """A copy of ``raw`` with dotted keys (``policy.minimum``) set to the given values."""
    result: dict[str, Any] = _deep_copy(raw)
    for dotted, value in overrides.items():
        node = result
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[leaf] = value
    return result


def _deep_copy(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in mapping.items()}


def load_config(
    path: Path | None = None,
    overrides: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ScalerConfig:
    """Read, override and validate the scaler configuration.

    >>> load_config(overrides={"scheduler.address": "tcp://127.0.0.1:8786",
    ...                        "backend.name": "fake"}, environ={}).policy.name
    'adaptive'
    """
    raw = apply_overrides(read_raw(path, environ), overrides or {})
    return parse_config(raw)


def scaler_schema() -> dict[str, Any]:
    """The JSON Schema of ``scaler.yaml`` (shipped beside this module)."""
    schema: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return schema


def parse_config(raw: Mapping[str, Any]) -> ScalerConfig:
    """Validate a configuration mapping into a :class:`ScalerConfig`.

    The schema (``scaler.schema.json``) is checked first, through the same one-line errors as
    the values files; what a schema cannot say (exactly one scheduler address, ``maximum`` at
    least ``minimum``) is checked here.
    """
    validate(raw, scaler_schema())
    policy, loop = _section(raw, "policy"), _section(raw, "loop")
    minimum = policy.get("minimum", 0)
    maximum = policy.get("maximum", max(10, minimum))
    if maximum < minimum:
        raise SettingsError("policy.maximum", maximum, f"an integer >= policy.minimum ({minimum})")
    metrics = raw.get("metrics")
    backend = _section(raw, "backend")
    return ScalerConfig(
        deployment=raw.get("deployment", "dask"),
        scheduler=_scheduler(_section(raw, "scheduler")),
        policy=PolicyConfig(
            name=policy.get("name", "adaptive"),
            minimum=minimum,
            maximum=maximum,
            options=dict(policy.get("options") or {}),
        ),
        loop=LoopSettings(
            interval=float(loop.get("interval", 1.0)),
            startup_timeout=float(loop.get("startup_timeout", 300.0)),
            cleanup_on_exit=loop.get("cleanup_on_exit", False),
        ),
        metrics=None if metrics is None else MetricsSettings(**metrics),
        backend=BackendConfig(name=backend["name"], options=dict(backend.get("options") or {})),
    )


def _section(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value: Mapping[str, Any] | None = raw.get(key)
    return {} if value is None else value


def _scheduler(section: Mapping[str, Any]) -> SchedulerSettings:
    address, scheduler_file = section.get("address"), section.get("scheduler_file")
    if (address is None) == (scheduler_file is None):
        raise SettingsError(
            "scheduler.address",
            address,
            "exactly one of scheduler.address / scheduler.scheduler_file",
        )
    security = section.get("security")
    return SchedulerSettings(
        address=address,
        scheduler_file=scheduler_file,
        security=None if security is None else SecuritySettings(**security),
    )
