"""`dask-deploy render` as a user runs it: the installed command, with ``--set key=value``."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DASK_DEPLOY = REPO / ".venv" / "bin" / "dask-deploy"


def render_with_settings(
    backend: str, settings: Mapping[str, object], out: Path
) -> subprocess.CompletedProcess[str]:
    """Run ``dask-deploy render --backend B --set key=value ... --out OUT``; never raises."""
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    return subprocess.run(
        [str(DASK_DEPLOY), "render", "--backend", backend, *sets, "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
