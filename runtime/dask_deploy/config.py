"""The scaler configuration (``scaler.yaml``, see docs/scaler-config.md), loaded once.

:func:`load_config` reads the file named by ``--config`` or, without it, the YAML
text in the environment variable ``DASK_DEPLOY_SCALER_CONFIG``; command-line
overrides are applied to that mapping before it is validated, so a bad flag is
reported under the key it sets. Every problem raises :class:`SettingsError`
naming the key, the value and what is allowed.

Defaults: every key of ``policy``, ``loop``, ``deployment`` and the ``options``
mappings may be left out (values as in the documentation's example); the
scheduler address (or file) and ``backend.name`` must be given.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ._errors import SettingsError, UserInputError

ENV_VAR = "DASK_DEPLOY_SCALER_CONFIG"
_DEPLOYMENT = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


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


def parse_config(raw: Mapping[str, Any]) -> ScalerConfig:
    """Validate a configuration mapping into a :class:`ScalerConfig`."""
    _only(raw, "", {"deployment", "scheduler", "policy", "loop", "metrics", "backend"})
    deployment = raw.get("deployment", "dask")
    if not (
        isinstance(deployment, str) and len(deployment) <= 40 and _DEPLOYMENT.fullmatch(deployment)
    ):
        raise SettingsError(
            "deployment", deployment, "lower-case letters, digits and '-', at most 40 characters"
        )
    return ScalerConfig(
        deployment=deployment,
        scheduler=_scheduler(_section(raw, "scheduler", required=True)),
        policy=_policy(_section(raw, "policy")),
        loop=_loop(_section(raw, "loop")),
        metrics=None if raw.get("metrics") is None else _metrics(_section(raw, "metrics")),
        backend=_backend(_section(raw, "backend", required=True)),
    )


def _section(raw: Mapping[str, Any], key: str, *, required: bool = False) -> Mapping[str, Any]:
    value = raw.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, Mapping):
        raise SettingsError(key, value, "a mapping")
    return value


def _only(section: Mapping[str, Any], prefix: str, known: set[str]) -> None:
    for key in sorted(section, key=str):
        if key not in known:
            raise SettingsError(
                f"{prefix}{key}", section[key], f"one of {', '.join(sorted(known))}"
            )


def _str(section: Mapping[str, Any], key: str, full: str, default: str | None = None) -> str:
    value = section.get(key, default)
    if not isinstance(value, str) or not value:
        raise SettingsError(full, value, "a non-empty string")
    return value


def _int(section: Mapping[str, Any], key: str, full: str, default: int, at_least: int) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < at_least:
        raise SettingsError(full, value, f"an integer >= {at_least}")
    return value


def _positive(section: Mapping[str, Any], key: str, full: str, default: float) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise SettingsError(full, value, "a number > 0")
    return float(value)


def _options(section: Mapping[str, Any], full: str) -> Mapping[str, object]:
    value = section.get("options")
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SettingsError(full, value, "a mapping")
    return dict(value)


def _scheduler(section: Mapping[str, Any]) -> SchedulerSettings:
    _only(section, "scheduler.", {"address", "scheduler_file", "security"})
    address, scheduler_file = section.get("address"), section.get("scheduler_file")
    if (address is None) == (scheduler_file is None):
        raise SettingsError(
            "scheduler.address",
            address,
            "exactly one of scheduler.address / scheduler.scheduler_file",
        )
    if address is not None and not (
        isinstance(address, str) and re.fullmatch(r"(tcp|tls)://\S+:\d+", address)
    ):
        raise SettingsError("scheduler.address", address, "tcp://HOST:PORT or tls://HOST:PORT")
    if scheduler_file is not None:
        scheduler_file = _str(section, "scheduler_file", "scheduler.scheduler_file")
    security = None
    if section.get("security") is not None:
        sec = _section(section, "security")
        _only(sec, "scheduler.security.", {"ca_file", "cert_file", "key_file"})
        security = SecuritySettings(
            **{
                key: _str(sec, key, f"scheduler.security.{key}")
                for key in ("ca_file", "cert_file", "key_file")
            }
        )
    return SchedulerSettings(address=address, scheduler_file=scheduler_file, security=security)


def _policy(section: Mapping[str, Any]) -> PolicyConfig:
    _only(section, "policy.", {"name", "minimum", "maximum", "options"})
    minimum = _int(section, "minimum", "policy.minimum", 0, 0)
    maximum = _int(section, "maximum", "policy.maximum", max(10, minimum), 0)
    if maximum < minimum:
        raise SettingsError("policy.maximum", maximum, f"an integer >= policy.minimum ({minimum})")
    return PolicyConfig(
        name=_str(section, "name", "policy.name", "adaptive"),
        minimum=minimum,
        maximum=maximum,
        options=_options(section, "policy.options"),
    )


def _loop(section: Mapping[str, Any]) -> LoopSettings:
    _only(section, "loop.", {"interval", "startup_timeout", "cleanup_on_exit"})
    cleanup = section.get("cleanup_on_exit", False)
    if not isinstance(cleanup, bool):
        raise SettingsError("loop.cleanup_on_exit", cleanup, "true or false")
    return LoopSettings(
        interval=_positive(section, "interval", "loop.interval", 1.0),
        startup_timeout=_positive(section, "startup_timeout", "loop.startup_timeout", 300.0),
        cleanup_on_exit=cleanup,
    )


def _metrics(section: Mapping[str, Any]) -> MetricsSettings:
    _only(section, "metrics.", {"host", "port"})
    port = _int(section, "port", "metrics.port", 9090, 0)
    if port > 65535:
        raise SettingsError("metrics.port", port, "an integer between 0 and 65535")
    return MetricsSettings(host=_str(section, "host", "metrics.host", "127.0.0.1"), port=port)


def _backend(section: Mapping[str, Any]) -> BackendConfig:
    _only(section, "backend.", {"name", "options"})
    return BackendConfig(
        name=_str(section, "name", "backend.name"), options=_options(section, "backend.options")
    )
