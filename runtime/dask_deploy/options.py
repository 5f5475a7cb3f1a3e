"""One validator for policy options, backend options, the scaler configuration and values files.

Every problem becomes a :class:`~dask_deploy.SettingsError` naming the key path, the value
given and what is allowed, in one line, so the CLI exits 2 without a traceback. Two ways in:

* a JSON Schema (2020-12), through :func:`validate`: the values files, ``scaler.yaml`` and the
  ``options_schema`` a plug-in factory may publish (:func:`validate_plugin_options`);
* small typed readers (:func:`reject_unknown`, :func:`number`, :func:`integer`) for a factory
  that reads its options by hand. ``prefix`` is where the options sit in the scaler
  configuration: :data:`POLICY_OPTIONS` or :data:`BACKEND_OPTIONS`.

>>> validate({"workers": -1}, {"type": "object", "properties": {"workers": {"type": "integer",
...           "minimum": 0}}}, prefix="policy.options")
Traceback (most recent call last):
dask_deploy._errors.SettingsError: policy.options.workers: got -1, expected an integer >= 0
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping, Set
from typing import Any

import jsonschema

from ._errors import SettingsError, UserInputError

POLICY_OPTIONS = "policy.options"
BACKEND_OPTIONS = "backend.options"

PathSegment = str | int


class OptionsError(UserInputError):
    """Several settings are wrong at once: the first is named, then the others (exit 2)."""


def validate(data: object, schema: Mapping[str, Any], *, prefix: str = "") -> None:
    """Raise naming every problem of ``data`` against ``schema``; keys are shown under ``prefix``.

    One problem raises a :class:`SettingsError`, several one :class:`OptionsError` listing all.
    """
    raise_problems(problems(data, schema, prefix=prefix))


def problems(data: object, schema: Mapping[str, Any], *, prefix: str = "") -> list[SettingsError]:
    """Every problem of ``data`` against ``schema``, in key order, as one-line errors."""
    validator = jsonschema.Draft202012Validator(schema)
    where: tuple[PathSegment, ...] = tuple(prefix.split(".")) if prefix else ()
    found: list[SettingsError] = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.path))):
        found.extend(_error_to_settings(error, where))
    return found


def raise_problems(found: list[SettingsError], error: type[UserInputError] = OptionsError) -> None:
    """Raise the one problem, or ``error`` naming the first and listing the others."""
    if not found:
        return
    if len(found) == 1:
        raise found[0]
    first, *others = found
    raise error(f"{first}; and {len(others)} more: " + "; ".join(str(other) for other in others))


def validate_plugin_options(factory: object, options: Mapping[str, object], *, prefix: str) -> None:
    """Validate ``options`` with the factory's ``options_schema`` attribute, when it has one.

    A plug-in publishes the JSON Schema of its options by setting ``options_schema`` on its
    factory (function attributes work); the loop calls this before the factory, so a bad
    option reads the same as a bad values file.
    """
    schema = getattr(factory, "options_schema", None)
    if schema is None:
        return
    if not isinstance(schema, Mapping):
        raise TypeError(f"{factory!r}.options_schema must be a JSON Schema mapping")
    validate(dict(options), schema, prefix=prefix)


def reject_unknown(options: Mapping[str, object], known: Set[str], *, prefix: str) -> None:
    """Raise naming the first option that is not in ``known``."""
    for key in sorted(options):
        if key not in known:
            allowed = f"one of {', '.join(sorted(known))}" if known else "no options"
            raise SettingsError(f"{prefix}.{key}", options[key], allowed)


def number(
    options: Mapping[str, object],
    key: str,
    default: float,
    *,
    prefix: str,
    at_least: float,
    above: bool = False,
    at_most: float | None = None,
) -> float:
    """A float option within bounds (``above`` makes the lower bound exclusive)."""
    value = options.get(key, default)
    lower = f"> {at_least}" if above else f">= {at_least}"
    upper = f" and <= {at_most}" if at_most is not None else ""
    allowed = f"a number {lower}{upper}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingsError(f"{prefix}.{key}", value, allowed)
    too_low = value <= at_least if above else value < at_least
    if too_low or (at_most is not None and value > at_most):
        raise SettingsError(f"{prefix}.{key}", value, allowed)
    return float(value)


def integer(
    options: Mapping[str, object], key: str, default: int, *, prefix: str, at_least: int
) -> int:
    """An integer option ``>= at_least``."""
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < at_least:
        raise SettingsError(f"{prefix}.{key}", value, f"an integer >= {at_least}")
    return value


# --------------------------------------------------------------------------- JSON Schema errors


class _Missing:
    def __repr__(self) -> str:
        return "nothing"


def format_path(path: Iterable[PathSegment]) -> str:
    """``("worker", "env", 0)`` as ``worker.env[0]``, the way a user writes the key."""
    text = ""
    for segment in path:
        if isinstance(segment, int):
            text += f"[{segment}]"
        else:
            text += f".{segment}" if text else str(segment)
    return text


def type_name(value: object) -> str:
    """The YAML word for a value's type (``mapping``, ``list``, ``integer``...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


_TYPE_WORDS = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "true or false",
    "null": "null",
    "object": "a mapping",
    "array": "a list",
}


def _describe_type(schema: Mapping[str, Any]) -> str:
    kinds = schema.get("type")
    if kinds is None:
        return "a value"
    if isinstance(kinds, str):
        kinds = [kinds]
    return " or ".join(_TYPE_WORDS.get(kind, kind) for kind in kinds)


def _describe_bounds(schema: Mapping[str, Any]) -> str:
    kinds = schema.get("type")
    noun = "an integer" if kinds == "integer" or kinds == ["integer"] else "a number"
    parts = []
    for keyword, sign in (
        ("minimum", ">="),
        ("exclusiveMinimum", ">"),
        ("maximum", "<="),
        ("exclusiveMaximum", "<"),
    ):
        if keyword in schema:
            parts.append(f"{sign} {schema[keyword]}")
    nullable = " (or null)" if isinstance(kinds, list) and "null" in kinds else ""
    return f"{noun} {' and '.join(parts)}{nullable}"


def _error_to_settings(
    error: jsonschema.ValidationError, prefix: tuple[PathSegment, ...] = ()
) -> list[SettingsError]:
    """Turn one schema error into messages naming key path, value and what is allowed."""
    path = (*prefix, *error.absolute_path)
    key = format_path(path) or "(top level)"
    schema: Mapping[str, Any] = error.schema if isinstance(error.schema, Mapping) else {}
    value = error.instance
    keyword = error.validator
    if keyword == "additionalProperties" and isinstance(value, Mapping):
        known = list(schema.get("properties", {}))
        patterns = [re.compile(pattern) for pattern in schema.get("patternProperties", {})]
        unknown = [
            name
            for name in value
            if name not in known and not any(pattern.search(name) for pattern in patterns)
        ]
        where = f"in {key}" if path else "at the top level"
        listed = ", ".join(known) if known else "none"
        problems = []
        for name in unknown:
            guess = difflib.get_close_matches(str(name), known, n=1)
            hint = f"; did you mean {guess[0]}?" if guess else ""
            allowed = f"a known key (unknown key; allowed keys {where} are {listed}{hint})"
            problems.append(SettingsError(format_path((*path, name)), value[name], allowed))
        return problems
    if keyword == "required" and isinstance(value, Mapping):
        required = error.validator_value if isinstance(error.validator_value, list) else []
        missing = [name for name in required if name not in value]
        return [
            SettingsError(
                format_path((*path, name)),
                _Missing(),
                f"a value: {key} requires it"
                + (
                    f" ({_describe_type(schema['properties'][name])})"
                    if name in schema.get("properties", {})
                    else ""
                ),
            )
            for name in missing
        ]
    if keyword == "type":
        allowed = _describe_type(schema)
        if "string" in str(schema.get("type")) and isinstance(value, int | float | bool):
            allowed += f' (quote it to keep it a string: {key}="{value}")'
        return [SettingsError(key, value, allowed)]
    if keyword in ("enum", "const"):
        options = schema.get("enum", [schema.get("const")])
        return [SettingsError(key, value, "one of " + ", ".join(map(json.dumps, options)))]
    if keyword == "not" and isinstance(error.validator_value, Mapping):
        refused = error.validator_value.get("enum", [error.validator_value.get("const")])
        return [
            SettingsError(
                key,
                value,
                f"{_describe_type(schema)} other than " + ", ".join(map(json.dumps, refused)),
            )
        ]
    if keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return [SettingsError(key, value, _describe_bounds(schema))]
    if "propertyNames" in error.relative_schema_path:
        allowed = f"a key name matching {schema['pattern']}" if keyword == "pattern" else ""
        return [
            SettingsError(
                format_path((*path, str(value))),
                value,
                allowed or f"a valid key name ({error.message})",
            )
        ]
    if keyword == "pattern":
        return [SettingsError(key, value, f"a string matching {schema['pattern']}")]
    if keyword in ("minLength", "maxLength"):
        bounds = []
        if "minLength" in schema:
            bounds.append(f"at least {schema['minLength']}")
        if "maxLength" in schema:
            bounds.append(f"at most {schema['maxLength']}")
        return [SettingsError(key, value, f"a string of {' and '.join(bounds)} characters")]
    if keyword in ("minItems", "maxItems"):
        bounds = []
        if "minItems" in schema:
            bounds.append(f"at least {schema['minItems']}")
        if "maxItems" in schema:
            bounds.append(f"at most {schema['maxItems']}")
        return [SettingsError(key, value, f"a list of {' and '.join(bounds)} items")]
    if keyword == "uniqueItems":
        return [SettingsError(key, value, "a list without repeated items")]
    return [SettingsError(key, value, f"a value that passes the schema ({error.message})")]
