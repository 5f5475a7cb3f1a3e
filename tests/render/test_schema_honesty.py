"""Each backend's values.yaml and values.schema.json say the same thing, and say it well.

The defaults pass the schema; every key is in both files (the error says which file to edit);
every schema key has a description and every object with keys refuses unknown ones; every key
of values.yaml has a comment; and the backend registry matches the template folders.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from dask_deploy.backends import BACKENDS_WITHOUT_TEMPLATES, BUILTIN
from dask_deploy.values import SCHEMA_FILE, VALUES_FILE, available_backends, resolve_values

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates"
BACKENDS = available_backends(TEMPLATES)
FIRST_LINE = "# yaml-language-server: $schema=values.schema.json"


def load_schema(backend: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((TEMPLATES / backend / SCHEMA_FILE).read_text())
    return schema


def load_defaults(backend: str) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((TEMPLATES / backend / VALUES_FILE).read_text())
    return values or {}


def resolve_ref(node: Mapping[str, Any], schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow a local ``$ref`` (``#/$defs/name``); other nodes are returned as they are."""
    while isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/"):
        target: Any = schema
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def schema_objects(
    node: Mapping[str, Any], schema: Mapping[str, Any], path: str = ""
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every object schema with ``properties`` (or typed ``object``), with its key path."""
    node = resolve_ref(node, schema)
    if "properties" in node or node.get("type") == "object" or "object" in node.get("type", []):
        yield path or "(top level)", node
    for name, child in node.get("properties", {}).items():
        yield from schema_objects(child, schema, f"{path}.{name}" if path else name)
    for keyword in ("items", "additionalProperties"):
        child = node.get(keyword)
        if isinstance(child, Mapping):
            yield from schema_objects(child, schema, f"{path}[]" if keyword == "items" else path)
    for keyword in ("anyOf", "oneOf", "allOf"):
        for child in node.get(keyword, []):
            yield from schema_objects(child, schema, path)


def key_mismatches(
    values: Any, node: Mapping[str, Any], schema: Mapping[str, Any], path: str = ""
) -> tuple[list[str], list[str]]:
    """(keys only in values.yaml, keys only in the schema), compared where values has a mapping.

    A free-form map (no ``properties``, e.g. ``env``) holds whatever the user puts there; a key
    that is null or a list in values.yaml is not descended into.
    """
    node = resolve_ref(node, schema)
    properties = node.get("properties")
    if not isinstance(values, Mapping) or properties is None:
        return [], []
    only_values = [f"{path}{name}" for name in values if name not in properties]
    only_schema = [f"{path}{name}" for name in properties if name not in values]
    for name in properties:
        if name in values:
            deeper = key_mismatches(values[name], properties[name], schema, f"{path}{name}.")
            only_values += deeper[0]
            only_schema += deeper[1]
    return only_values, only_schema


@pytest.mark.parametrize("backend", BACKENDS)
def test_defaults_pass_the_schema(backend: str) -> None:
    resolve_values(backend, root=TEMPLATES)


@pytest.mark.parametrize("backend", BACKENDS)
def test_values_and_schema_have_the_same_keys(backend: str) -> None:
    only_values, only_schema = key_mismatches(load_defaults(backend), load_schema(backend), {})
    folder = f"templates/{backend}"
    assert not only_values, (
        f"keys in {folder}/{VALUES_FILE} that {folder}/{SCHEMA_FILE} does not describe: "
        f"{only_values}; add them to {SCHEMA_FILE} (with a description) or remove them"
    )
    assert not only_schema, (
        f"keys in {folder}/{SCHEMA_FILE} that {folder}/{VALUES_FILE} does not set: "
        f"{only_schema}; add them to {VALUES_FILE} with a comment and a default"
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_schema_key_has_a_description(backend: str) -> None:
    schema = load_schema(backend)
    missing = [
        f"{path}.{name}" if path != "(top level)" else name
        for path, node in schema_objects(schema, schema)
        for name, child in node.get("properties", {}).items()
        if not child.get("description") and not resolve_ref(child, schema).get("description")
    ]
    assert not missing, (
        f"add a description to these keys in templates/{backend}/{SCHEMA_FILE}: {missing}"
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_object_refuses_unknown_keys(backend: str) -> None:
    schema = load_schema(backend)
    open_objects = []
    for path, node in schema_objects(schema, schema):
        extra = node.get("additionalProperties", node.get("unevaluatedProperties"))
        if "properties" in node and extra is not False:
            open_objects.append(path)
        elif "properties" not in node and not isinstance(extra, Mapping) and extra is not False:
            open_objects.append(f"{path} (a free-form map needs an additionalProperties schema)")
    assert not open_objects, (
        f'set "additionalProperties": false on these objects in templates/{backend}/{SCHEMA_FILE}: '
        f"{open_objects}"
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_schema_declares_draft_2020_12(backend: str) -> None:
    assert load_schema(backend).get("$schema") == (
        "https://json-schema.org/draft/2020-12/schema"
    ), f'templates/{backend}/{SCHEMA_FILE} must declare "$schema" draft 2020-12'


@pytest.mark.parametrize("backend", BACKENDS)
def test_values_first_line_points_editors_at_the_schema(backend: str) -> None:
    first = (TEMPLATES / backend / VALUES_FILE).read_text().splitlines()[0]
    assert first == FIRST_LINE, f"templates/{backend}/{VALUES_FILE} must start with {FIRST_LINE!r}"


def _has_inline_comment(line: str) -> bool:
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'', '""', line)
    return re.search(r"\s#", unquoted) is not None


def uncommented_keys(text: str) -> list[str]:
    """Key paths of values.yaml with neither a comment line right above nor an inline comment."""
    lines = text.splitlines()
    missing: list[str] = []

    def visit(node: yaml.Node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key_path = f"{path}{key_node.value}"
                line = key_node.start_mark.line
                above = lines[line - 1].strip() if line > 0 else ""
                if not above.startswith("#") and not _has_inline_comment(lines[line]):
                    missing.append(f"{key_path} (line {line + 1})")
                visit(value_node, f"{key_path}.")
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                visit(item, f"{path.rstrip('.')}[{index}].")

    root = yaml.compose(text)
    if root is not None:
        visit(root, "")
    return missing


def test_uncommented_keys_finds_the_bare_ones() -> None:
    text = "# a\na: 1\nb: 2  # b\nc:\n  d: 1\n# e\ne: '#not a comment'\nf: \"x # y\"\n"
    assert uncommented_keys(text) == ["c (line 4)", "c.d (line 5)", "f (line 8)"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_values_key_has_a_comment(backend: str) -> None:
    bare = uncommented_keys((TEMPLATES / backend / VALUES_FILE).read_text())
    assert not bare, (
        f"add a comment (the line above, or at the end of the line) to these keys in "
        f"templates/{backend}/{VALUES_FILE}: {bare}"
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_folder_has_a_readme(backend: str) -> None:
    assert (TEMPLATES / backend / "README.md").is_file(), (
        f"templates/{backend}/README.md is missing: say how to apply the rendered files"
    )


#: Built-in backends whose templates are planned but not written yet, with the reason. The
#: registry test lets them lack a folder; once the folder exists, remove the entry (a test says so).
TEMPLATES_NOT_YET_WRITTEN: dict[str, str] = {}


def test_registry_matches_template_folders() -> None:
    expected = sorted(set(BUILTIN) - BACKENDS_WITHOUT_TEMPLATES - set(TEMPLATES_NOT_YET_WRITTEN))
    without_folder = [name for name in expected if name not in BACKENDS]
    without_registry = [name for name in BACKENDS if name not in BUILTIN]
    assert not without_folder, (
        f"built-in backends {without_folder} have no templates/<backend>/ with {VALUES_FILE}; "
        "add the folder, or list the backend in BACKENDS_WITHOUT_TEMPLATES "
        "(runtime/dask_deploy/backends/__init__.py) if it deploys nothing"
    )
    assert not without_registry, (
        f"template folders {without_registry} have no backend in BUILTIN "
        "(runtime/dask_deploy/backends/__init__.py)"
    )


def test_backends_without_templates_have_no_folder() -> None:
    assert BACKENDS_WITHOUT_TEMPLATES <= set(BUILTIN)
    assert not BACKENDS_WITHOUT_TEMPLATES & set(BACKENDS)


def test_pending_templates_list_is_current() -> None:
    written = sorted(set(TEMPLATES_NOT_YET_WRITTEN) & set(BACKENDS))
    assert not written, (
        f"templates/{written} exist now: remove them from TEMPLATES_NOT_YET_WRITTEN in {__file__}"
    )
    assert set(TEMPLATES_NOT_YET_WRITTEN) <= set(BUILTIN) - BACKENDS_WITHOUT_TEMPLATES
