"""Rendering a backend's templates in tests: as the library does it, or as a user runs it."""

from __future__ import annotations

import contextlib
import io
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dask_deploy.cli import main
from dask_deploy.render import render
from dask_deploy.values import resolve_values

REPO = Path(__file__).resolve().parents[1]
DASK_DEPLOY = REPO / ".venv" / "bin" / "dask-deploy"


def render_over_defaults(backend: str, values: dict[str, Any], out: Path) -> None:
    """Render ``templates/<backend>`` into ``out`` with ``values`` deep-merged over its defaults."""
    render(resolve_values(backend, overrides=[values], root=REPO / "templates"), out)


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


def run_cli_in_process(
    argv: Sequence[str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``dask-deploy ARGV`` through its entry point (``dask_deploy.cli.main``) in this process:
    the exit code and output a user would see, without a Python start per call."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with (
        contextlib.chdir(cwd if cwd is not None else Path.cwd()),
        contextlib.redirect_stdout(stdout),
        contextlib.redirect_stderr(stderr),
    ):
        try:
            code = main(list(argv))
        except SystemExit as exit_:  # argparse's own errors
            code = int(exit_.code or 0)
    return subprocess.CompletedProcess(list(argv), code, stdout.getvalue(), stderr.getvalue())


def command_args(script: str, marker: str) -> list[str]:
    """The words of the (backslash-continued) command line that contains ``marker``."""
    joined = script.replace("\\\n", " ")
    line = next(line for line in joined.splitlines() if marker in line)
    return shlex.split(line.rstrip(" &"))


def option(args: list[str], name: str) -> str:
    """The value that follows option ``name`` in ``args``."""
    return args[args.index(name) + 1]
