"""No module imports what another package keeps private.

A name starting with ``_`` (a module such as ``backends/_retry.py`` or a function such as
``_parse``) is private to the package that holds it: its own modules and subpackages may use
it, nobody else. Everything a plug-in author, the bench or a test needs is public
(``dask_deploy.contract``, ``dask_deploy.options``, ``dask_deploy.simulate``...).

Every module under ``runtime/dask_deploy``, ``bench`` and ``tests`` is checked: the tests
exercise the package the way a user does, so they follow the same rule (what a test needs
from inside a module is made public, with a name that says what it is).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Folder -> the dotted name its files' modules start with.
TREES = {ROOT / "runtime" / "dask_deploy": "dask_deploy", ROOT / "bench": "bench"}
TREES[ROOT / "tests"] = "tests"


def module_name(path: Path, tree: Path, prefix: str) -> str:
    parts = list(path.relative_to(tree).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([prefix, *parts])


def package_of(module: str, path: Path) -> str:
    """The package a module belongs to (a package's ``__init__`` belongs to itself)."""
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def imported(tree: ast.Module, package: str) -> Iterator[tuple[int, str]]:
    """(line, absolute dotted name) of everything a module imports, ``from`` names included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}" if alias.name != "*" else base


def private_owner(name: str) -> str | None:
    """The package that keeps ``name`` private (``a.b`` for ``a.b._c.d``), or ``None``."""
    parts = name.split(".")
    for index, part in enumerate(parts):
        if part.startswith("_") and not (part.startswith("__") and part.endswith("__")):
            return ".".join(parts[:index])
    return None


def violations(source: str, module: str, package: str) -> list[str]:
    found = []
    for line, name in imported(ast.parse(source), package):
        owner = private_owner(name)
        if owner is None:
            continue
        if package == owner or package.startswith(owner + "."):
            continue  # the owner's own modules and subpackages
        found.append(f"{module}:{line} imports {name}, private to {owner or 'its top level'}")
    return found


def all_violations() -> list[str]:
    found = []
    for tree, prefix in TREES.items():
        for path in sorted(tree.rglob("*.py")):
            if ".venv" in path.parts:
                continue
            module = module_name(path, tree, prefix)
            source = path.read_text(encoding="utf-8")
            found += violations(source, module, package_of(module, path))
    return found


def test_no_module_imports_another_packages_private_modules_or_names() -> None:
    assert all_violations() == []


@pytest.mark.parametrize(
    ("source", "module", "package", "bad"),
    [
        ("from ..backends._retry import retry", "dask_deploy.policy.x", "dask_deploy.policy", True),
        ("from dask_deploy.backends import _retry", "bench.run", "bench", True),
        ("import dask_deploy._errors", "tests.unit.test_x", "tests.unit", True),
        ("from dask_deploy.backends.local import _pids", "tests.t", "tests", True),
        ("from ._retry import retry", "dask_deploy.backends.k8s", "dask_deploy.backends", False),
        ("from .._errors import E", "dask_deploy.backends.k8s", "dask_deploy.backends", False),
        ("from . import _select", "dask_deploy.policy", "dask_deploy.policy", False),
        ("from __future__ import annotations", "bench.run", "bench", False),
        ("from dask_deploy import __version__", "bench.run", "bench", False),
    ],
)
def test_the_check_tells_private_from_public(
    source: str, module: str, package: str, bad: bool
) -> None:
    assert bool(violations(source, module, package)) is bad
