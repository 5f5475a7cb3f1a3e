"""Every scenario re-renders byte for byte to its committed golden folder (`make golden`)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

import pytest

from dask_deploy.golden import SCENARIO_SUFFIX, Scenario, find_scenarios, golden_folders
from dask_deploy.render import RECORD_FILE, checksums
from dask_deploy.values import available_backends

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates"
SCENARIOS = REPO / "tests" / "scenarios"
GOLDEN = REPO / "tests" / "golden"

FIX = "run `make golden` and review the diff of tests/golden/ before committing"
#: Scenarios every backend with templates must have (see the render contract).
REQUIRED_SCENARIOS = ("defaults", "tls", "custom")


def files_under(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def describe_difference(name: str, expected: bytes, actual: bytes) -> str:
    try:
        diff = difflib.unified_diff(
            expected.decode().splitlines(keepends=True),
            actual.decode().splitlines(keepends=True),
            fromfile=f"golden/{name}",
            tofile=f"rendered/{name}",
        )
        return "".join(diff)
    except UnicodeDecodeError:
        return f"{name}: binary content differs\n"


@pytest.mark.parametrize(
    "scenario",
    find_scenarios(SCENARIOS),
    ids=lambda scenario: f"{scenario.backend}/{scenario.name}",
)
def test_scenario_renders_to_its_golden_files(
    scenario: Scenario, tmp_path: Path, render_scenario: Callable[..., Path]
) -> None:
    golden = scenario.golden_folder(GOLDEN)
    assert golden.is_dir(), f"{golden} is missing; {FIX}"
    rendered = files_under(render_scenario(scenario.backend, scenario.values_file, tmp_path))
    # The record of a render is derived from the other files: checked here, not committed.
    record = rendered.pop(RECORD_FILE).decode()
    assert record == checksums({k: v.decode() for k, v in rendered.items()})
    expected = files_under(golden)
    assert sorted(rendered) == sorted(expected), (
        f"{scenario.backend}/{scenario.name} renders files {sorted(rendered)} but "
        f"{golden} holds {sorted(expected)}; {FIX}"
    )
    diffs = [
        describe_difference(name, expected[name], rendered[name])
        for name in sorted(rendered)
        if rendered[name] != expected[name]
    ]
    assert not diffs, f"rendered output differs from {golden}; {FIX}\n" + "".join(diffs)


def test_every_golden_folder_has_a_scenario() -> None:
    wanted = {scenario.golden_folder(GOLDEN) for scenario in find_scenarios(SCENARIOS)}
    orphans = [folder for folder in golden_folders(GOLDEN) if folder not in wanted]
    assert not orphans, (
        f"golden folders without a tests/scenarios/<backend>/<name>{SCENARIO_SUFFIX}: "
        f"{[str(folder.relative_to(GOLDEN)) for folder in orphans]}; {FIX}"
    )


def test_every_scenario_is_for_a_backend_with_templates() -> None:
    backends = available_backends(TEMPLATES)
    strays = [s.values_file for s in find_scenarios(SCENARIOS) if s.backend not in backends]
    assert not strays, f"scenarios for backends without templates/<backend>/: {strays}"


def test_no_stray_files_in_scenario_folders() -> None:
    strays = [
        path.relative_to(SCENARIOS).as_posix()
        for path in sorted(SCENARIOS.rglob("*"))
        if path.is_file() and not path.name.endswith(SCENARIO_SUFFIX)
    ]
    assert not strays, f"files in tests/scenarios/ not named <name>{SCENARIO_SUFFIX}: {strays}"


@pytest.mark.parametrize("backend", available_backends(TEMPLATES))
def test_backend_has_the_required_scenarios(backend: str) -> None:
    names = {s.name for s in find_scenarios(SCENARIOS) if s.backend == backend}
    missing = [name for name in REQUIRED_SCENARIOS if name not in names]
    assert not missing, (
        f"add tests/scenarios/{backend}/<name>{SCENARIO_SUFFIX} for {missing} "
        "(defaults may be `{}`; tls turns TLS on; custom sets resources and extra args)"
    )
