"""A rendered batch deployment (SLURM, Grid Engine, PBS, LSF) submitted as a user does, for the
end-to-end tests of every batch family.

``submitted(...)`` renders ``templates/<backend>`` with ``deployment_values(...)`` into a folder,
makes the log folder as the template README says (``../<deployment>-logs``), submits the
scheduler job from the rendered folder with the family's own command and, whatever the test
did, cleans up with the family's own command and prints the job logs (pytest shows them on
failure). Each family's module (slurm_deployment.py, sge_deployment.py, ...) adds how it lists
its jobs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from distributed import Client

from process_support import wait_for

VENV = Path(sys.executable).parent.parent


@dataclass
class BatchDeployment:
    """One submitted deployment: its name, the rendered folder and the scheduler's job id."""

    name: str
    folder: Path
    scheduler_job: str

    @property
    def worker_job_name(self) -> str:
        return f"{self.name}-worker"

    @property
    def log_folder(self) -> Path:
        """Where every job writes its output: the templates' default log_directory."""
        return self.folder.parent / f"{self.name}-logs"

    @property
    def scheduler_file(self) -> Path:
        """The file the scheduler writes (``<deployment>-scheduler.json``, the default)."""
        return self.folder / f"{self.name}-scheduler.json"

    def log_files(self) -> list[Path]:
        # PBS's own .o files land where the flavour puts them (SLURM's qsub: the rendered folder).
        return sorted(self.log_folder.glob("*.log")) + sorted(self.folder.glob("*.o*"))

    def logs(self) -> str:
        """The end of every log, each under its name."""
        return "\n".join(
            f"----- {log.name}\n{log.read_text(errors='replace')[-4000:]}"
            for log in self.log_files()
        )

    def all_logs(self) -> str:
        """Every log, whole."""
        return "".join(log.read_text(errors="replace") for log in self.log_files())


def folder_logs(folders: Iterable[Path], tail: int = 3000) -> str:
    """The end of every ``*.log`` in ``folders``, each under its name."""
    return "\n".join(
        f"----- {log.name}\n{log.read_text(errors='replace')[-tail:]}"
        for folder in folders
        for log in sorted(folder.glob("*.log"))
    )


def worker_names(client: Client) -> set[str]:
    # `dask worker` turns a numeric --name into an int: compare as text, like the scheduler does.
    return {str(w["name"]) for w in client.scheduler_info()["workers"].values()}


def deployment_values(name: str, scaler: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """Values for a deployment on 127.0.0.1 running this venv, with short scaler timings.

    ``scaler`` holds the keys a test chooses (bounds, window, startup timeout); ``sections``
    adds whole top-level sections such as ``tls``.
    """
    return {
        "deployment": name,
        "python": {"venv": str(VENV)},
        "scheduler": {"host": "127.0.0.1", "dashboard_port": None, "memory_mib": 512},
        "worker": {
            "host": "127.0.0.1",
            "threads": 1,
            "memory_mib": 512,
            "walltime_minutes": 10,
            "handover_margin": 60,
            "lifetime_margin": 30,
            "lifetime_stagger": 0,
            "death_timeout": 20,
        },
        "scaler": {"interval": 0.5, "metrics_port": None, "cleanup_on_exit": True, **scaler},
        # Plain TCP unless a test asks for TLS (the default): these tests' clients hold no
        # certificates. The TLS tests run the default.
        "tls": {"enabled": False},
        **sections,
    }


def render(backend: str, values: dict[str, Any], out: Path) -> None:
    """``dask-deploy render --backend <backend>`` as a user runs it; fails the test on error."""
    values_file = out.parent / f"{out.name}-values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    command = [str(VENV / "bin" / "dask-deploy"), "render", "--backend", backend]
    rendered = subprocess.run(
        [*command, "--values", str(values_file), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert rendered.returncode == 0, rendered.stderr


@contextmanager
def submitted(
    backend: str,
    values: dict[str, Any],
    folder: Path,
    *,
    submit: Callable[[Path], str],
    clean_up: Callable[[BatchDeployment], None],
    edit: Callable[[Path], None] = lambda folder: None,
    diagnose: Callable[[], str] = lambda: "",
) -> Iterator[BatchDeployment]:
    """Render ``values`` into ``folder``, let ``edit`` change the rendered files as a user may,
    ``submit(folder)`` the scheduler job (returns its id), ``clean_up`` everything after."""
    render(backend, values, folder)
    edit(folder)
    deployed = BatchDeployment(str(values["deployment"]), folder, "")
    deployed.log_folder.mkdir(exist_ok=True)  # the README's `mkdir -p ../<deployment>-logs`
    deployed.scheduler_job = submit(folder)
    try:
        yield deployed
    finally:
        clean_up(deployed)
        print(deployed.logs())  # shown by pytest when the test failed
        print(diagnose())


def connect(deployment: BatchDeployment, timeout: float = 90) -> Client:
    """A client of the deployment's scheduler, once the scheduler file is there."""
    wait_for(
        f"the scheduler job writes {deployment.scheduler_file}\n{deployment.logs()}",
        deployment.scheduler_file.exists,
        timeout=timeout,
    )
    return Client(scheduler_file=str(deployment.scheduler_file), timeout="30s")


def burst(client: Client, seconds: int) -> tuple[list[Any], list[Any]]:
    """One-second sleeps that keep workers busy, and squares whose results the client holds."""
    sleeps = client.map(time.sleep, [1.0] * seconds, pure=False)
    squares = client.map(pow, range(seconds), [2] * seconds)
    return sleeps, squares
