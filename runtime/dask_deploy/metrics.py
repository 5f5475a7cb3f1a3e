"""Prometheus metrics of the scaler: what it wants, holds and sees, and what went wrong."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from .policy import Decision


class ScalerMetrics:
    """The scaler's metrics in their own registry (so several scalers fit in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.target = Gauge("dask_deploy_target_workers", "Target of the last decision", registry=r)
        self.requested = Gauge(
            "dask_deploy_requested_workers", "Instances held by the backend", registry=r
        )
        self.observed = Gauge(
            "dask_deploy_observed_workers", "Our workers connected to the scheduler", registry=r
        )
        self.pending = Gauge(
            "dask_deploy_pending_workers", "Requested instances not yet connected", registry=r
        )
        self.stuck = Gauge(
            "dask_deploy_stuck_workers",
            "Pending instances the resource manager says cannot start (Instance.reason)",
            registry=r,
        )
        self.ticks = Counter(
            "dask_deploy_ticks", "Loop iterations finished (ok or failed)", registry=r
        )
        self.decisions = Counter("dask_deploy_decisions", "Decisions by kind", ["kind"], registry=r)
        self.retire_failures = Counter(
            "dask_deploy_retire_failures", "Workers the scheduler could not retire", registry=r
        )
        self.backend_errors = Counter(
            "dask_deploy_backend_errors", "Failed backend calls", registry=r
        )
        self.scheduler_errors = Counter(
            "dask_deploy_scheduler_errors", "Failed scheduler calls", registry=r
        )
        self.policy_minimum = Gauge(
            "dask_deploy_policy_minimum_workers", "Lower bound of the running policy", registry=r
        )
        self.policy_maximum = Gauge(
            "dask_deploy_policy_maximum_workers", "Upper bound of the running policy", registry=r
        )
        self._server: Any = None

    def set_bounds(self, minimum: int, maximum: int) -> None:
        """The bounds of the running policy (they change when a client asks for others)."""
        self.policy_minimum.set(minimum)
        self.policy_maximum.set(maximum)

    def record(self, decision: Decision, requested: int, observed: int, pending: int) -> None:
        """Update the gauges and count the decision."""
        self.decisions.labels(kind=decision.kind).inc()
        if "target" in decision.numbers:
            self.target.set(decision.numbers["target"])
        self.requested.set(requested)
        self.observed.set(observed)
        self.pending.set(pending)

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint; returns the port it listens on (useful with port 0)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def stop(self) -> None:
        """Stop the HTTP endpoint, if it runs."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
