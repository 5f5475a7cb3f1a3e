"""Image sizes and worker cold start: `make bench-images` (a benchmark, not a test).

For each image (scheduler, worker, scaler) prints its size and the size of each of its layers
(what made the layer, from `docker history`); then starts a scheduler container
and, RUNS times, one worker container, measuring from `docker run` to the worker being
registered with the scheduler; prints every run and the median. Host network, 127.0.0.1.
Needs the images (`make images`) and an engine (`make docker-up`).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import tomllib
import warnings
from pathlib import Path

from distributed import Client

REPO = Path(__file__).resolve().parents[1]
REPOSITORY = os.environ.get("DASK_DEPLOY_IMAGE_REPOSITORY", "ghcr.io/dask-deploy/dask-deploy")
LABEL = "dask-deploy.bench=1"


def version() -> str:
    with (REPO / "pyproject.toml").open("rb") as file:
        return str(tomllib.load(file)["project"]["version"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def image_size(tag: str) -> int:
    return int(docker("image", "inspect", "--format", "{{.Size}}", tag).strip())


def layers(tag: str) -> list[tuple[int, str]]:
    """(bytes, what made it) of each non-empty layer, base first."""
    history = docker("history", "--human=false", "--no-trunc", "--format", "{{json .}}", tag)
    rows = [json.loads(line) for line in history.splitlines() if line.strip()]
    made = []
    for row in reversed(rows):
        size = int(row["Size"])
        if size == 0:
            continue
        command = " ".join(str(row["CreatedBy"]).split())
        command = command.removeprefix("/bin/sh -c ").removeprefix("#(nop) ")
        made.append((size, command or str(row.get("Comment") or "base image")))
    return made


def cold_start(client: Client, worker_image: str, address: str, run: int) -> float:
    """Seconds from `docker run` to the worker registered with the scheduler."""
    name = f"bench-worker-{run}-{time.time_ns() % 10**6}"
    started = time.perf_counter()
    docker(
        "run",
        "--detach",
        "--network=host",
        f"--label={LABEL}",
        f"--name={name}",
        worker_image,
        address,
        f"--name={name}",
        "--host=127.0.0.1",
        "--nthreads=1",
    )
    try:
        while True:
            names = {w["name"] for w in client.scheduler_info()["workers"].values()}
            if name in names:
                return time.perf_counter() - started
            if time.perf_counter() - started > 120:
                raise RuntimeError(f"{name} did not register within 120 s")
            time.sleep(0.05)
    finally:
        docker("rm", "--force", name)


def main() -> int:
    # The host's Python patch release differs from Debian's 3.11.2 in the images; not a finding.
    warnings.filterwarnings("ignore", message="Mismatched versions found")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="cold starts to measure (default 5)")
    args = parser.parse_args()
    tags = {role: f"{REPOSITORY}-{role}:{version()}" for role in ("scheduler", "worker", "scaler")}
    print("image sizes (layers base first):")
    for tag in tags.values():
        print(f"  {tag:55} {image_size(tag) / 1e6:7.1f} MB")
        for size, command in layers(tag):
            print(f"    {size / 1e6:7.1f} MB  {command[:90]}")

    port, dashboard = free_port(), free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = f"bench-scheduler-{time.time_ns() % 10**6}"
    docker(
        "run",
        "--detach",
        "--network=host",
        f"--label={LABEL}",
        f"--name={scheduler}",
        tags["scheduler"],
        "--host=127.0.0.1",
        f"--port={port}",
        f"--dashboard-address=127.0.0.1:{dashboard}",
    )
    try:
        with Client(address, timeout="60s") as client:
            seconds = []
            for run in range(args.runs):
                seconds.append(cold_start(client, tags["worker"], address, run))
                print(f"  cold start {run + 1}: {seconds[-1]:.2f} s")
        print(
            f"worker cold start (container start -> registered), median of {args.runs}: "
            f"{statistics.median(seconds):.2f} s"
        )
    finally:
        docker("rm", "--force", scheduler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
