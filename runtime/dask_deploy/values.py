"""Values for the templates: defaults, a values file and ``--set`` merged, then validated.

The order is Helm's: ``templates/<backend>/values.yaml`` holds the defaults, a user's values
file is deep-merged over them, each ``--set key.path=value`` is applied over that, and the
result is checked against ``templates/<backend>/values.schema.json`` (JSON Schema 2020-12)
before anything is rendered. Every problem becomes one :class:`UserInputError` that names the
key path, the value given and what is allowed, so the CLI exits 2 without a traceback.

>>> parse_set("worker.extra_args[0]=--no-nanny")
SetAssignment(path=('worker', 'extra_args', 0), value='--no-nanny')
>>> deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}})
{'a': {'b': 1, 'c': 3}}
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import jsonschema
import yaml

from ._errors import SettingsError, UserInputError
from .options import PathSegment, format_path, problems, raise_problems, type_name
from .worker_preload import NANNY_STOP_SECONDS

#: Overrides where the templates are found (a folder holding ``<backend>/values.yaml``).
TEMPLATES_ENV = "DASK_DEPLOY_TEMPLATES"
VALUES_FILE = "values.yaml"
SCHEMA_FILE = "values.schema.json"
#: Folders under the templates root that hold shared macros, not a backend.
COMMON_FOLDER = "_common"

Values = dict[str, Any]


class ValuesError(UserInputError):
    """The values could not be loaded or do not pass the schema (exit 2)."""


# --------------------------------------------------------------------------- templates root


def templates_root(override: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding ``<backend>/`` template folders and ``_common/``.

    Looked up in this order: ``override`` (the ``--templates`` option), the environment
    variable ``DASK_DEPLOY_TEMPLATES``, then :func:`installed_templates_root`.
    """
    return templates_roots(override)[0]


def installed_templates_root() -> Path:
    """The ``templates/`` of the source checkout this package runs from (an editable
    install), else the ``templates/`` shipped inside the package."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir.parents[1] / "templates", package_dir / "templates"):
        if (candidate / COMMON_FOLDER).is_dir():
            return candidate
    raise UserInputError(
        f"no templates found next to {package_dir} or inside it; "
        f"set {TEMPLATES_ENV} to the folder that holds <backend>/values.yaml"
    )


def templates_roots(override: str | os.PathLike[str] | None = None) -> list[Path]:
    """Template roots in the order they are searched: a fork first, then the installed ones.

    The fork is ``override`` (``--templates``) or ``$DASK_DEPLOY_TEMPLATES``. It is laid
    *over* the installed templates: a file in the fork replaces the installed file of the
    same path, and every other file (other backends, ``_common`` macros, a backend's
    ``values.yaml``) still comes from the installation. So forking one template of one
    backend is one file in the fork.
    """
    fork: Path | None = None
    if override is not None:
        fork = _checked_root(Path(override), "--templates")
    elif os.environ.get(TEMPLATES_ENV):
        fork = _checked_root(Path(os.environ[TEMPLATES_ENV]), TEMPLATES_ENV)
    try:
        installed = installed_templates_root()
    except UserInputError:
        if fork is None:
            raise
        return [fork]
    if fork is None or fork.resolve() == installed.resolve():
        return [installed]
    return [fork, installed]


def _checked_root(root: Path, source: str) -> Path:
    if not root.is_dir():
        raise SettingsError(source, str(root), "a folder that holds <backend>/values.yaml")
    return root


def available_backends(root: Path | Sequence[Path]) -> list[str]:
    """Sorted names of the backends that have templates under ``root`` (or any of them)."""
    roots = [root] if isinstance(root, Path) else list(root)
    return sorted(
        {
            entry.name
            for one in roots
            for entry in one.iterdir()
            if entry.is_dir() and not entry.name.startswith("_") and (entry / VALUES_FILE).is_file()
        }
    )


def backend_folder(root: Path | Sequence[Path], backend: str) -> Path:
    """The first ``<root>/backend`` holding a values.yaml, or an error listing the backends."""
    roots = [root] if isinstance(root, Path) else list(root)
    backends = available_backends(roots)
    if backend not in backends:
        shown = ", ".join(str(r) for r in roots)
        allowed = ", ".join(backends) if backends else f"(none: {shown} holds no backend folder)"
        raise SettingsError("--backend", backend, f"one of the backends with templates: {allowed}")
    return next(r / backend for r in roots if (r / backend / VALUES_FILE).is_file())


# --------------------------------------------------------------------------- YAML files


# libyaml's parser where PyYAML was built with it: the pure-Python one spends most of a render
# reading the backend's commented values.yaml.
if TYPE_CHECKING:
    from yaml import CSafeLoader as _SafeLoader
else:
    _SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found the key {key!r} twice",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_unique_mapping,
)


def load_values_file(path: str | os.PathLike[str], *, what: str = "--values") -> Values:
    """Read a YAML mapping from ``path``; an empty file is ``{}``.

    A missing or unreadable file, malformed YAML, a duplicate key or a top level that is not
    a mapping raises :class:`ValuesError` naming the file.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(
            what, str(file), "an existing YAML file (there is no such file)"
        ) from None
    except IsADirectoryError:
        raise SettingsError(what, str(file), "a YAML file, not a folder") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValuesError(f"{what} {file}: cannot read it: {error}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as error:
        raise ValuesError(f"{what} {file}: malformed YAML{_describe_mark(error)}") from None
    except yaml.YAMLError as error:
        raise ValuesError(f"{what} {file}: malformed YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValuesError(
            f"{what} {file}: got a {type_name(data)} at the top level, "
            "expected a mapping of keys to values (e.g. `scaler: {maximum: 20}`)"
        )
    _check_string_keys(data, (), f"{what} {file}")
    return data


def _check_string_keys(node: object, path: tuple[PathSegment, ...], source: str) -> None:
    """YAML reads ``on``, ``no`` or ``8786`` as a boolean or number: a key must be a string."""
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str):
                where = f" in {format_path(path)}" if path else ""
                raise SettingsError(
                    f"{source}: key{where}",
                    key,
                    f'a string key; quote it ("{key}") because YAML reads on/off/yes/no and '
                    "numbers as other types",
                )
            _check_string_keys(value, (*path, key), source)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            _check_string_keys(item, (*path, index), source)


def _describe_mark(error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = ", ".join(part for part in (error.context, error.problem) if part)
    return f"{where}: {problem}" if problem else where


def load_schema(path: Path) -> dict[str, Any]:
    """Read and check a JSON Schema; a broken schema is the template author's error."""
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValuesError(f"{path}: the backend has no schema; every backend needs one") from None
    except json.JSONDecodeError as error:
        raise ValuesError(
            f"{path}: malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as error:
        where = format_path(error.absolute_path) or "(top level)"
        raise ValuesError(f"{path}: not a valid JSON Schema at {where}: {error.message}") from None
    if not isinstance(schema, dict):
        raise ValuesError(f"{path}: the schema must be a JSON object")
    return schema


# --------------------------------------------------------------------------- merging


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> Values:
    """A new mapping: ``override`` over ``base``, merging nested mappings key by key.

    Lists and scalars in ``override`` replace those in ``base`` (as in Helm); ``null`` is a
    value like any other, it does not delete the key. Neither argument is modified.
    """
    merged: Values = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# --------------------------------------------------------------------------- --set

SET_EXAMPLES = (
    'e.g. scaler.maximum=20, worker.extra_args[0]=--no-nanny, image.tag="1.0" (quotes keep a '
    "string), worker.extra_args={a,b} (a list)"
)
SET_SYNTAX = f"key.path=value, {SET_EXAMPLES}"
_INDEX = re.compile(r"\[(\d+)\]")
#: A key name: anything but '.', '[', ']', '=' and spaces; a backslash escapes . [ ] or itself.
_KEY_NAME = re.compile(r"(?:\\[.\[\]\\]|[^.\[\]\\\s=])+")
_ESCAPE = re.compile(r"\\(.)")
_INTEGER = re.compile(r"[-+]?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[-+]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+")


@dataclass(frozen=True)
class SetAssignment:
    """One parsed ``--set``: where to put the value and the typed value."""

    path: tuple[PathSegment, ...]
    value: Any


def _bad_set(expression: str, why: str) -> SettingsError:
    return SettingsError("--set", expression, f"key.path=value ({why}), {SET_EXAMPLES}")


def parse_set_path(expression: str, path_text: str) -> tuple[PathSegment, ...]:
    r"""Split ``a.b[0].c`` into ``("a", "b", 0, "c")``; ``\.`` is a dot inside a key."""
    if not path_text:
        raise _bad_set(expression, "the key path before '=' is empty")
    segments: list[PathSegment] = []
    position = 0
    while True:
        name = _KEY_NAME.match(path_text, position)
        if not name:
            raise _bad_set(expression, _why_unexpected(path_text, position))
        segments.append(_ESCAPE.sub(r"\1", name.group()))
        position = name.end()
        while index := _INDEX.match(path_text, position):
            segments.append(int(index.group(1)))
            position = index.end()
        if position == len(path_text):
            return tuple(segments)
        if path_text[position] != ".":
            raise _bad_set(expression, _why_unexpected(path_text, position))
        position += 1


def _why_unexpected(path_text: str, position: int) -> str:
    """Why a key path cannot go on at ``position``, for the error message."""
    if position == len(path_text):
        return "the key path ends with '.'"
    char, where = path_text[position], f"at character {position + 1}"
    if char == ".":
        return f"empty key name {where}"
    if char == "[":
        if _INDEX.match(path_text, position):
            return f"a list index needs a key before it {where}"
        return f"a list index must be [<number>] {where}"
    if path_text[position - 1] == "]":
        return f"expected '.' or '[' after ']' {where}"
    if char.isspace():
        return f"key names contain no spaces {where}"
    return f"unexpected {char!r} {where}"


def parse_set_value(text: str, expression: str = "") -> Any:
    """Type a ``--set`` value like Helm: ``true``/``false``, ``null``, numbers, else a string.

    A value in double or single quotes is always a string (``"1.0"`` stays ``'1.0'``);
    ``{a,b}`` is a list of such values and ``{}`` the empty list.
    """
    if text and text[0] in "\"'":
        if len(text) < 2 or text[-1] != text[0]:
            raise _bad_set(expression or text, f"the quote {text[0]} is not closed")
        return text[1:-1]
    if text.startswith("{") and text.endswith("}"):
        inner = text[1:-1]
        if not inner.strip():
            return []
        return [parse_set_value(item.strip(), expression) for item in inner.split(",")]
    lowered = text.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    if lowered in ("null", "~"):
        return None
    if _INTEGER.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


def parse_set(expression: str) -> SetAssignment:
    """Parse one ``--set key.path=value``; a malformed one raises naming the expression."""
    path_text, equals, value_text = expression.partition("=")
    if not equals:
        raise _bad_set(expression, "there is no '='")
    path = parse_set_path(expression, path_text.strip())
    return SetAssignment(path, parse_set_value(value_text, expression))


def apply_set(values: Mapping[str, Any], assignment: SetAssignment) -> Values:
    """A copy of ``values`` with the assignment made, creating mappings and lists on the way.

    Like Helm, a value of the wrong shape on the way is replaced (the schema then says what
    is allowed there). A list index may be at most the list's length (which appends).
    """
    result: Values = copy.deepcopy(dict(values))
    container: Any = result
    path = assignment.path
    for depth, segment in enumerate(path):
        last = depth == len(path) - 1
        following = None if last else path[depth + 1]
        fresh: Any = [] if isinstance(following, int) else {}
        if isinstance(segment, int):
            if segment > len(container):
                where = format_path(path[:depth])
                raise SettingsError(
                    format_path(path),
                    assignment.value,
                    f"an index from 0 to {len(container)} ({where} has {len(container)} items)",
                )
            if segment == len(container):
                container.append(None)
        if last:
            container[segment] = assignment.value
            break
        child = container[segment] if isinstance(segment, int) else container.get(segment)
        if not isinstance(child, type(fresh)):
            child = fresh
            container[segment] = child
        container = child
    return result


# --------------------------------------------------------------------------- validation


def validate_values(values: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Raise one error naming every problem of ``values`` against ``schema``."""
    found = problems(values, schema) or _cross_field_problems(values)
    raise_problems(found, ValuesError)


def _cross_field_problems(values: Mapping[str, Any]) -> list[SettingsError]:
    """Rules a JSON Schema cannot say, shared by every backend's values."""
    return [*_bounds_problems(values), *_handover_problems(values)]


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _bounds_problems(values: Mapping[str, Any]) -> list[SettingsError]:
    scaler = values.get("scaler")
    if not isinstance(scaler, Mapping):
        return []
    minimum, maximum = scaler.get("minimum"), scaler.get("maximum")
    if _is_int(minimum) and _is_int(maximum) and minimum > maximum:
        return [
            SettingsError("scaler.minimum", minimum, f"at most scaler.maximum, which is {maximum}")
        ]
    return []


#: The worker's grace period (between SIGTERM and SIGKILL) in each values file that has
#: ``worker.handover_timeout``.
GRACE_PERIOD_KEYS = ("termination_grace_period", "stop_timeout", "kill_grace_period")


def _handover_problems(values: Mapping[str, Any]) -> list[SettingsError]:
    """The handover and the nanny's stop after it must end before the grace period does, or
    the resource manager SIGKILLs the worker halfway and its data is lost anyway."""
    worker = values.get("worker")
    if not isinstance(worker, Mapping):
        return []
    handover = worker.get("handover_timeout")
    grace_key = next((key for key in GRACE_PERIOD_KEYS if key in worker), None)
    if grace_key is None or not _is_int(handover) or not handover:
        return []
    grace = worker[grace_key]
    if _is_int(grace) and handover + NANNY_STOP_SECONDS > grace:
        return [
            SettingsError(
                "worker.handover_timeout",
                handover,
                f"at most worker.{grace_key} - {NANNY_STOP_SECONDS} ({grace - NANNY_STOP_SECONDS}):"
                f" after the handover the nanny may take {NANNY_STOP_SECONDS} s to stop the"
                f" worker, all within the {grace} s before SIGKILL",
            )
        ]
    return []


# --------------------------------------------------------------------------- all together


@dataclass(frozen=True)
class ResolvedValues:
    """The merged, validated values of one backend, ready to render."""

    backend: str
    folder: Path
    values: Values = field(repr=False)
    #: Template roots searched in order (a fork over the installed ones); empty means
    #: ``folder.parent`` alone.
    roots: tuple[Path, ...] = ()


def resolve_values(
    backend: str,
    *,
    values_files: Sequence[str | os.PathLike[str]] = (),
    sets: Sequence[str] = (),
    overrides: Sequence[Mapping[str, Any]] = (),
    root: Path | Sequence[Path] | None = None,
) -> ResolvedValues:
    """Defaults, then each values file, then each override mapping, then each ``--set``.

    >>> resolve_values("slurm", sets=["scaler.maximum=20"]).values["scaler"]["maximum"]
    20
    """
    roots = templates_roots() if root is None else [root] if isinstance(root, Path) else list(root)
    folder = backend_folder(roots, backend)
    # Parse --set first: a typo there is reported before any file is read.
    assignments = [parse_set(expression) for expression in sets]
    values = load_values_file(folder / VALUES_FILE, what="defaults file")
    for values_file in values_files:
        values = deep_merge(values, load_values_file(values_file))
    for override in overrides:
        values = deep_merge(values, override)
    for assignment in assignments:
        values = apply_set(values, assignment)
    schema = next(
        (r / backend / SCHEMA_FILE for r in roots if (r / backend / SCHEMA_FILE).is_file()),
        folder / SCHEMA_FILE,
    )
    validate_values(values, load_schema(schema))
    return ResolvedValues(backend=backend, folder=folder, values=values, roots=tuple(roots))
