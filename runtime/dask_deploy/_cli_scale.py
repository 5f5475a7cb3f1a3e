"""``dask-deploy scale``: run the scaler sidecar next to a scheduler."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Mapping
from pathlib import Path

from ._extras import require_extra
from .channel import ChannelScaler
from .config import ScalerConfig, load_config
from .observe import wait_for_address
from .scaler import ConfigSource, Scaler

HELP = "Run the scaler: keep the worker count right for the scheduler's load."
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: flag destination -> dotted configuration key it overrides
_OVERRIDES = {
    "deployment": "deployment",
    "scheduler": "scheduler.address",
    "scheduler_file": "scheduler.scheduler_file",
    "backend": "backend.name",
    "policy": "policy.name",
    "minimum": "policy.minimum",
    "maximum": "policy.maximum",
    "interval": "loop.interval",
    "startup_timeout": "loop.startup_timeout",
    "metrics_port": "metrics.port",
    "metrics_host": "metrics.host",
}


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``scale`` flags."""
    parser.add_argument(
        "--config",
        type=Path,
        help="scaler.yaml (docs/scaler-config.md); default: $DASK_DEPLOY_SCALER_CONFIG",
    )
    parser.add_argument("--deployment", help="overrides deployment")
    parser.add_argument("--scheduler", help="overrides scheduler.address (tcp:// or tls://)")
    parser.add_argument("--scheduler-file", help="overrides scheduler.scheduler_file")
    parser.add_argument("--backend", help="overrides backend.name")
    parser.add_argument("--policy", help="overrides policy.name")
    parser.add_argument("--minimum", type=int, help="overrides policy.minimum")
    parser.add_argument("--maximum", type=int, help="overrides policy.maximum")
    parser.add_argument("--interval", type=float, help="overrides loop.interval (seconds)")
    parser.add_argument(
        "--startup-timeout", type=float, help="overrides loop.startup_timeout (seconds)"
    )
    parser.add_argument("--metrics-port", type=int, help="overrides metrics.port")
    parser.add_argument(
        "--metrics-host", help='overrides metrics.host (e.g. a Mesos task\'s "$HOST")'
    )
    parser.add_argument(
        "--cleanup-on-exit",
        action="store_true",
        default=None,
        help="remove every instance of the deployment when the scaler stops",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print decisions without acting: the configured backend's options are checked "
        "and its instances listed, read-only; nothing is started or stopped",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="logging level (default INFO)",
    )


def settings_from_args(args: argparse.Namespace) -> ScalerConfig:
    """The configuration file (or environment) with the flags applied."""
    return load_config(args.config, overrides_from_args(args))


def overrides_from_args(args: argparse.Namespace) -> dict[str, object]:
    """The settings the flags override, by their dotted keys."""
    overrides: dict[str, object] = {
        key: getattr(args, dest)
        for dest, key in _OVERRIDES.items()
        if getattr(args, dest) is not None
    }
    if args.scheduler is not None:
        overrides["scheduler.scheduler_file"] = None
    if args.scheduler_file is not None:
        overrides["scheduler.address"] = None
    if args.cleanup_on_exit:
        overrides["loop.cleanup_on_exit"] = True
    return overrides


def build_scaler(
    config: ScalerConfig, *, dry_run: bool = False, address: str | None = None
) -> ChannelScaler:
    """The scaler the command runs: the loop of :func:`dask_deploy.scaler.build_scaler`, also
    taking adapt()/scale() requests from clients through the scheduler."""
    require_extra(config.backend.name)
    return ChannelScaler.from_config(config, dry_run=dry_run, address=address)


async def serve(
    config: ScalerConfig,
    *,
    dry_run: bool = False,
    config_file: Path | None = None,
    overrides: Mapping[str, object] | None = None,
) -> None:
    """Run the scaler until SIGTERM or SIGINT, then close everything cleanly.

    With ``config_file``, the scaler reads it again (with ``overrides``) whenever it, or a file
    its backend options name, changes.
    """
    address = await wait_for_address(config.scheduler, timeout=config.loop.startup_timeout)
    scaler = build_scaler(config, dry_run=dry_run, address=address)
    if config_file is not None:
        scaler.config_source = ConfigSource(config_file, config, address, dict(overrides or {}))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if config.metrics is not None:
        port = scaler.metrics.serve(config.metrics.host, config.metrics.port)
        # With port 0 (a node shared by deployments) this line and the published status are
        # where the port can be found.
        scaler.metrics_url = f"http://{config.metrics.host}:{port}/metrics"
        logging.getLogger("dask_deploy.scaler").info("metrics on %s", scaler.metrics_url)
    if dry_run:
        await _list_instances(scaler, config.backend.name)
    try:
        await scaler.run(stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        scaler.metrics.stop()
        await scaler.backend.close()
        await scaler.scheduler.close()
        logging.getLogger("dask_deploy.scaler").info("scaler stopped")


async def _list_instances(scaler: Scaler, backend: str) -> None:
    """A dry run says what the real backend holds now (read-only)."""
    log = logging.getLogger("dask_deploy.scaler")
    try:
        instances = await scaler.backend.instances()
    except Exception as error:
        log.warning("[dry-run] the %s backend could not list its instances: %r", backend, error)
        return
    shown = ", ".join(f"{i.name} ({i.state.value})" for i in instances) or "none"
    log.info("[dry-run] the %s backend holds %d instances: %s", backend, len(instances), shown)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dask-deploy scale``."""
    config = settings_from_args(args)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Validate the policy and backend options before starting anything.
    asyncio.run(
        serve(
            config,
            dry_run=bool(args.dry_run),
            config_file=args.config,
            overrides=overrides_from_args(args),
        )
    )
    return 0
