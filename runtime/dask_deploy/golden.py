"""Regenerate the golden files: ``python -m dask_deploy.golden tests/scenarios tests/golden``.

Each ``<scenarios>/<backend>/<name>-values.yaml`` is rendered (merged over the backend's
defaults, like ``--values``) into ``<golden>/<backend>/<name>/``. Golden folders without a
scenario are removed, so the committed tree always matches the scenarios.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ._errors import UserInputError
from .render import render_files, write_atomically
from .values import resolve_values, templates_root

SCENARIO_SUFFIX = "-values.yaml"


@dataclass(frozen=True)
class Scenario:
    """One values file to render and the folder its output is kept in."""

    backend: str
    name: str
    values_file: Path

    def golden_folder(self, golden_root: Path) -> Path:
        """Where this scenario's rendered files are committed."""
        return golden_root / self.backend / self.name


def find_scenarios(scenarios_root: Path) -> list[Scenario]:
    """Every ``<backend>/<name>-values.yaml`` under ``scenarios_root``, sorted."""
    return [
        Scenario(path.parent.name, path.name.removesuffix(SCENARIO_SUFFIX), path)
        for path in sorted(scenarios_root.glob(f"*/*{SCENARIO_SUFFIX}"))
    ]


def golden_folders(golden_root: Path) -> list[Path]:
    """Every ``<backend>/<name>/`` folder under ``golden_root``, sorted."""
    return sorted(path for path in golden_root.glob("*/*") if path.is_dir())


def regenerate(
    scenarios_root: Path, golden_root: Path, templates: Path | None = None
) -> list[Path]:
    """Render every scenario into its golden folder and drop folders of vanished scenarios.

    Every scenario is rendered in memory first, so one that fails changes no golden file.
    """
    root = templates if templates is not None else templates_root()
    scenarios = find_scenarios(scenarios_root)
    rendered = {
        scenario: render_files(
            resolve_values(scenario.backend, values_files=[scenario.values_file], root=root)
        )
        for scenario in scenarios
    }
    written: list[Path] = []
    for scenario, files in rendered.items():
        folder = scenario.golden_folder(golden_root)
        # Golden folders are generated: a file a template no longer renders must go too.
        shutil.rmtree(folder, ignore_errors=True)
        written.extend(write_atomically(folder, files))
    wanted = {scenario.golden_folder(golden_root) for scenario in scenarios}
    for folder in golden_folders(golden_root):
        if folder not in wanted:
            shutil.rmtree(folder)
            print(f"removed {folder} (no scenario {folder.name}{SCENARIO_SUFFIX})")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: regenerate and print each file written."""
    parser = argparse.ArgumentParser(prog="python -m dask_deploy.golden", description=__doc__)
    parser.add_argument("scenarios", type=Path, help="folder of <backend>/<name>-values.yaml")
    parser.add_argument("golden", type=Path, help="folder of <backend>/<name>/ rendered files")
    args = parser.parse_args(argv)
    try:
        for path in regenerate(args.scenarios, args.golden):
            print(path)
    except UserInputError as error:
        print(f"golden: error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
