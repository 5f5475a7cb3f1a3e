"""Image sizes and worker cold start: `make bench-images` (a benchmark, not a test).

For each image (scheduler, worker, scaler) prints its size next to its target (issue 22: worker
at most 400 MB, scaler at most 180 MB; the scheduler has none) as a ratio, and each of its
layers, base first: its size, the instruction that made it (from `docker history`) and which
other images share it; then what a node running all three stores (each shared layer once).
Then starts a scheduler container and, RUNS times, one worker container, measuring from
`docker run` to the worker being registered with the scheduler; prints every run and the
median. Host network, 127.0.0.1. Needs the images (`make images`) and an engine
(`make docker-up`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import tomllib
import warnings
from dataclasses import dataclass
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


#: Size targets (bytes) from issue 22; the scheduler has none.
TARGETS = {"worker": 400_000_000, "scaler": 180_000_000}


@dataclass(frozen=True)
class Layer:
    size: int
    made_by: str
    #: Every layer up to this one, as (size, instruction): equal in two images that share the
    #: layer (a COPY's instruction names the digest of what it copied).
    chain: tuple[tuple[int, str], ...]


def layers(tag: str) -> list[Layer]:
    """Each layer with content, base first, with the instruction that made it."""
    history = docker("history", "--human=false", "--no-trunc", "--format", "{{json .}}", tag)
    rows = [json.loads(line) for line in history.splitlines() if line.strip()]
    made: list[Layer] = []
    for row in reversed(rows):
        size = int(row["Size"])
        if size == 0:
            continue
        command = " ".join(str(row["CreatedBy"]).split())
        command = command.removeprefix("/bin/sh -c ").removeprefix("#(nop) ").strip()
        command = command or str(row.get("Comment") or "base image")
        chain = (*(made[-1].chain if made else ()), (size, command))
        made.append(Layer(size, command, chain))
    return made


def print_sizes(tags: dict[str, str]) -> None:
    images = {role: layers(tag) for role, tag in tags.items()}
    print("image sizes (layers base first; 'shared' = the same layer is in that image too):")
    for role, tag in tags.items():
        size = image_size(tag)
        target = TARGETS.get(role)
        versus = (
            f"{size / target:5.2f} of its target {target / 1e6:.0f} MB" if target else "no target"
        )
        print(f"  {tag:55} {size:>11,} B = {size / 1e6:6.1f} MB  ({versus})")
        for layer in images[role]:
            shared = [
                other
                for other, others in images.items()
                if other != role and any(o.chain == layer.chain for o in others)
            ]
            note = f"  [shared: {', '.join(shared)}]" if shared else ""
            made_by = re.sub(r"\b(dir|file):([0-9a-f]{12})[0-9a-f]+", r"\1:\2…", layer.made_by)
            print(f"    {layer.size / 1e6:7.1f} MB  {made_by[:80]}{note}")
    unique = {layer.chain: layer.size for each in images.values() for layer in each}
    print(f"  all three on one node (each shared layer once): {sum(unique.values()) / 1e6:.1f} MB")


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
    parser.add_argument("--sizes-only", action="store_true", help="print the sizes, start nothing")
    args = parser.parse_args()
    tags = {role: f"{REPOSITORY}-{role}:{version()}" for role in ("scheduler", "worker", "scaler")}
    print_sizes(tags)
    if args.sizes_only:
        return 0

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
