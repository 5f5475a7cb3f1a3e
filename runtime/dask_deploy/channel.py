"""The scheduler as the channel between a client and the running scaler.

A client (``DeployCluster.adapt`` / ``scale``) writes the policy it wants into the
scheduler's metadata under ``("dask-deploy", <deployment>, "request")``; the scaler reads
it at the start of its next tick, validates it with the same checks as ``scaler.yaml``,
logs the change and decides with the new policy from then on. After every tick the
scaler writes what it is doing under ``("dask-deploy", <deployment>, "status")``, which
``dask-deploy status`` and ``DeployCluster.status()`` read. Both go through the
scheduler's stock ``set_metadata`` / ``get_metadata`` handlers: no new port, no new
credential, nothing pickled.

>>> validate_request({"name": "fixed", "minimum": 2, "maximum": 2}).minimum
2
>>> validate_request({"name": "adaptive", "minimum": 3, "maximum": 1})
Traceback (most recent call last):
...
dask_deploy._errors.SettingsError: policy.maximum: got 1, expected an integer >= policy.minimum (3)
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

from .config import PolicyConfig, ScalerConfig, parse_config
from .policy import Decision, Hold, Policy, describe
from .scaler import Scaler, TickResult, build_policy, build_scaler

logger = logging.getLogger("dask_deploy.scaler")

#: First element of every metadata key dask-deploy writes into the scheduler.
METADATA_ROOT = "dask-deploy"
#: How many of the scaler's last decisions the published status keeps.
DECISIONS_KEPT = 20


def request_key(deployment: str) -> list[str]:
    """Where a client writes the policy it wants."""
    return [METADATA_ROOT, deployment, "request"]


def status_key(deployment: str) -> list[str]:
    """Where the scaler publishes what it is doing."""
    return [METADATA_ROOT, deployment, "status"]


def validate_request(request: Mapping[str, Any], *, startup_timeout: float = 300.0) -> PolicyConfig:
    """The ``policy`` section ``request`` as ``scaler.yaml`` would accept it.

    Raises :class:`~dask_deploy.SettingsError` with the same one line the scaler's
    command line prints for the same section in a configuration file.
    """
    policy = _parse_section(request)
    build_policy(policy, startup_timeout)  # the plug-in's options schema and its own checks
    return policy


def _parse_section(request: Mapping[str, Any]) -> PolicyConfig:
    # parse_config checks the section exactly as it checks a file; the other sections are
    # placeholders it needs to be complete.
    placeholder = {"scheduler": {"address": "tcp://127.0.0.1:1"}, "backend": {"name": "fake"}}
    return parse_config({**placeholder, "policy": dict(request)}).policy


def policy_as_dict(policy: PolicyConfig) -> dict[str, Any]:
    """A policy section as plain data (for the scheduler's metadata and JSON output)."""
    return {
        "name": policy.name,
        "minimum": policy.minimum,
        "maximum": policy.maximum,
        "options": dict(policy.options),
    }


class MetadataLink(Protocol):
    """The scheduler's metadata store, as the channel needs it."""

    async def get_metadata(self, keys: list[str]) -> Any:
        """The value under ``keys``, or ``None`` when there is none."""
        ...

    async def set_metadata(self, keys: list[str], value: Any) -> None:
        """Store ``value`` under ``keys``."""
        ...


@dataclass(frozen=True)
class PublishedDecision:
    """One decision as the scaler publishes it in the scheduler for ``dask-deploy status``.

    Not :class:`dask_deploy.steps.DecisionRecord` (the typed record the loop, the simulator
    and the bench compare): this is its plain, JSON-ready form with the decision's log line.
    """

    time: float
    kind: str
    line: str

    def as_dict(self) -> dict[str, Any]:
        return {"time": self.time, "kind": self.kind, "line": self.line}


class ChannelScaler(Scaler):
    """The control loop, also taking policy requests from and publishing status to the scheduler.

    ``scheduler`` must also be a :class:`MetadataLink` (the RPC link is). A request is an
    ``id`` (any string, new for each request) and a ``policy`` section; each id is applied
    once. A request the scaler refuses leaves the running policy as it was, and the refusal
    is logged and published.
    """

    def __init__(
        self,
        *,
        deployment: str,
        policy_config: PolicyConfig,
        metadata: MetadataLink | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.deployment = deployment
        self.policy_config = policy_config
        # Without its own metadata link the channel is the scheduler's RPC link (it is one).
        self.metadata = metadata if metadata is not None else cast(MetadataLink, self.scheduler)
        self.applied_request: str | None = None
        self.refused_request: dict[str, str] | None = None
        self.decisions: deque[PublishedDecision] = deque(maxlen=DECISIONS_KEPT)
        self._last_decision: tuple[str, str] = ("", "")
        self.metrics.set_bounds(policy_config.minimum, policy_config.maximum)

    @classmethod
    def from_config(
        cls, config: ScalerConfig, *, dry_run: bool = False, address: str | None = None
    ) -> ChannelScaler:
        """The loop :func:`~dask_deploy.scaler.build_scaler` builds for ``config``, with the
        scheduler's RPC link as the metadata channel too."""
        scaler = build_scaler(
            config,
            dry_run=dry_run,
            address=address,
            scaler_type=cls,
            deployment=config.deployment,
            policy_config=config.policy,
        )
        assert isinstance(scaler, ChannelScaler)
        return scaler

    async def _apply_request(self) -> None:
        request = await self.metadata.get_metadata(request_key(self.deployment))
        if not isinstance(request, Mapping) or request.get("id") == self.applied_request:
            return
        request_id = str(request.get("id"))
        self.applied_request = request_id
        section = request.get("policy")
        try:
            if not isinstance(section, Mapping):
                raise ValueError(f"policy: got {section!r}, expected a mapping")
            config = _parse_section(section)
            policy = build_policy(config, self.settings.startup_timeout)  # validates it, too
        except Exception as error:
            self.refused_request = {"id": request_id, "error": str(error)}
            logger.warning("policy request %s refused: %s", request_id, error)
            return
        logger.info(
            "policy changed by request %s: %s (was %s)",
            request_id,
            _describe_policy(config),
            _describe_policy(self.policy_config),
        )
        # The loop enforces the bounds and names the policy in its log: both follow the request.
        self.adopt_policy(config, policy)
        self.refused_request = None

    def adopt_policy(self, config: PolicyConfig, policy: Policy) -> None:
        super().adopt_policy(config, policy)
        self.policy_config = config  # status shows the policy in force, whoever changed it

    def _remember(self, decision: Decision) -> None:
        if decision.kind == "hold" and (decision.kind, decision.reason) == self._last_decision:
            return  # the same hold tick after tick is one entry, not twenty
        self._last_decision = (decision.kind, decision.reason)
        self.decisions.append(PublishedDecision(self.clock(), decision.kind, describe(decision)))

    def status(self, result: TickResult) -> dict[str, Any]:
        """What ``dask-deploy status`` shows of the scaler (documented in docs/python-api.md)."""
        observation = result.observation
        numbers = dict(result.decision.numbers)
        return {
            "updated_at": self.clock(),
            "interval": self.settings.interval,
            "policy": policy_as_dict(self.policy_config),
            "applied_request": self.applied_request,
            "refused_request": self.refused_request,
            "target": numbers.get("target"),
            "requested": None if observation is None else len(observation.requested),
            "observed": None if observation is None else len(observation.observed),
            "pending": None if observation is None else len(observation.pending),
            "instances": []
            if observation is None
            else [{"name": i.name, "state": i.state.value} for i in observation.instances],
            "decisions": [record.as_dict() for record in self.decisions],
            "metrics": self.metrics_url,
        }

    async def tick(self) -> TickResult:
        try:
            await self._apply_request()
        except Exception as error:
            # The scheduler is unreachable. Hold now: asking it again to observe would wait out
            # a second connect timeout, and the outage would show that much later.
            hold = Hold(f"scheduler unreachable, not scaling: {error!r}")
            self.metrics.scheduler_errors.inc()
            self.metrics.decisions.labels(kind=hold.kind).inc()
            self._log_decision(hold)
            self._remember(hold)
            return TickResult(hold, None, ok=False)
        result = await super().tick()
        self._remember(result.decision)
        try:
            await self.metadata.set_metadata(status_key(self.deployment), self.status(result))
        except Exception as error:
            logger.debug("could not publish the status: %r", error)
        return result


def _describe_policy(policy: PolicyConfig) -> str:
    options = " ".join(f"{k}={v}" for k, v in sorted(policy.options.items()))
    return f"{policy.name} minimum={policy.minimum} maximum={policy.maximum}" + (
        f" {options}" if options else ""
    )


def new_request_id() -> str:
    """A request id that differs from every earlier one."""
    return uuid.uuid4().hex


__all__ = [
    "METADATA_ROOT",
    "ChannelScaler",
    "MetadataLink",
    "PublishedDecision",
    "build_policy",
    "new_request_id",
    "policy_as_dict",
    "request_key",
    "status_key",
    "validate_request",
]
