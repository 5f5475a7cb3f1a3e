"""Helpers for the DeployCluster and up/status/down tests: state folder, processes, metrics."""

from __future__ import annotations

import asyncio
import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dask_deploy import DeployCluster, lifecycle


class PublishedDecisions:
    """The kinds of every decision a cluster's scaler published, gathered at each call.

    The published status keeps the last 20 decisions (``dask_deploy.channel``), and holds whose
    reason changes tick to tick each take one: an early "up" can be gone by the end of a run.
    Calling this inside the waits that follow the load collects each decision while it is there.
    """

    def __init__(self, cluster: DeployCluster) -> None:
        self.cluster = cluster
        self.kinds: set[str] = set()

    def __call__(self) -> set[str]:
        status = self.cluster.scaler_status()
        self.kinds.update(d["kind"] for d in (status or {}).get("decisions", []))
        return self.kinds


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (a deployment's folder)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "cmdline").read_bytes()
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        line = raw.decode(errors="replace").replace("\0", " ")
        if text in line and state != "Z":
            found.append(f"{entry.name}: {line}")
    return found


def processes_working_in(folder: Path) -> list[str]:
    """Command lines of live processes whose working directory is ``folder`` or below it
    (the stand-ins run each task or pod in its own sandbox folder)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(Path(entry.path, "cwd")))
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
            raw = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        if state != "Z" and cwd.is_relative_to(folder):
            found.append(f"{entry.name}: {raw.decode(errors='replace').replace(chr(0), ' ')}")
    return found


def metrics_url(scaler_log: Path) -> str | None:
    """The scaler's metrics endpoint, as its log announces it."""
    if not scaler_log.is_file():
        return None
    match = re.search(r"metrics on (http://\S+/metrics)", scaler_log.read_text())
    return match.group(1) if match else None


def metric(url: str, name: str) -> float | None:
    """One unlabelled sample of the scaler's Prometheus endpoint."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


@pytest.fixture
def state_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private deployments folder; whatever a test left running is taken down after it."""
    root = tmp_path / "state"
    monkeypatch.setenv(lifecycle.STATE_ENV, str(root))
    yield root
    for name in lifecycle.list_names(root):
        record = lifecycle.DeploymentRecord.load(name, root)
        asyncio.run(lifecycle.retire_and_stop(record))
