"""Render helpers shared by the render tests: ``render_scenario`` and the repository's paths."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from dask_deploy.render import render
from dask_deploy.values import resolve_values

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates"
SCENARIOS = REPO / "tests" / "scenarios"
GOLDEN = REPO / "tests" / "golden"

RenderScenario = Callable[[str, "Path | str | Mapping[str, Any]", Path], Path]


def render_scenario(
    backend: str,
    values: Path | str | Mapping[str, Any],
    tmp_path: Path,
    *,
    templates: Path = TEMPLATES,
) -> Path:
    """Render ``backend`` with a values file or mapping (merged over its defaults).

    Returns a new folder under ``tmp_path`` holding the rendered files, exactly what
    ``dask-deploy render --backend <backend> --values <file>`` writes.
    """
    if isinstance(values, Mapping):
        resolved = resolve_values(backend, overrides=[values], root=templates)
        label = "values"
    else:
        resolved = resolve_values(backend, values_files=[values], root=templates)
        label = Path(values).name.removesuffix(".yaml")
    out = Path(tempfile.mkdtemp(prefix=f"{backend}-{label}-", dir=tmp_path)) / "out"
    render(resolved, out)
    return out


@pytest.fixture(name="render_scenario")
def render_scenario_fixture() -> RenderScenario:
    """``render_scenario(backend, values_file_or_dict, tmp_path) -> Path`` of the output."""
    return render_scenario
