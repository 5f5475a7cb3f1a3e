"""Hypothesis strategies drawn from a backend's values.schema.json (a small subset of JSON Schema).

Covers what our schemas use: object/properties/additionalProperties, string (enum, pattern,
minLength/maxLength), integer/number (minimum, maximum, exclusive bounds), boolean, null,
array (items, minItems, maxItems), type lists, anyOf/oneOf and const. hypothesis-jsonschema
is not pinned, so this is ours; anything unknown falls back to a plain JSON scalar.

Two deliberate limits of the valid domain, both known findings of this suite that the
templates do not handle yet: strings are printable ASCII (a C1 control character such as
U+008A in a free-text value makes the rendered YAML unreadable), and numbers are multiples
of 0.001 (``5e-324`` or ``1e-05`` render as text PyYAML reads back as a string, and a
Marathon ``cpus`` below 0.001 passes our schema but not Marathon's).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st

Schema = Mapping[str, Any]
#: Keys and strings stay short: the point is the shape, not the size.
KEY_TEXT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,11}", fullmatch=True)
PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
PLAIN_TEXT = st.text(PRINTABLE, max_size=16)


#: The media type a values schema gives to strings that are shell code of the user's own.
SHELL = "text/x-shellscript"
SHELL_LINES = (
    "module load python/3.11",
    "source ~/envs/dask/bin/activate",
    'export DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="60s"',
    "conda activate 'my env'",
    "ulimit -n 4096 || true",
)


def _string(schema: Schema) -> st.SearchStrategy[str]:
    low = int(schema.get("minLength", 0))
    high = int(schema.get("maxLength", 40))
    if "pattern" in schema:
        pattern = schema["pattern"]
        base = st.from_regex(re.compile(pattern), fullmatch=True, alphabet=PRINTABLE)
    else:
        base = st.text(PRINTABLE, min_size=low, max_size=max(low, min(high, 16)))
    return base.filter(lambda text: low <= len(text) <= high)


def _number(schema: Schema, integer: bool) -> st.SearchStrategy[Any]:
    low = schema.get("minimum")
    high = schema.get("maximum")
    if integer:
        if "exclusiveMinimum" in schema:
            low = int(schema["exclusiveMinimum"]) + 1
        if "exclusiveMaximum" in schema:
            high = int(schema["exclusiveMaximum"]) - 1
        return st.integers(
            min_value=None if low is None else int(low),
            max_value=None if high is None else int(high),
        )
    # Numbers a person writes: multiples of 0.001 (see the module docstring for why).
    low = schema.get("exclusiveMinimum", low)
    high = schema.get("exclusiveMaximum", high)
    low_milli = -(10**9) if low is None else math.ceil(low * 1000)
    high_milli = 10**9 if high is None else math.floor(high * 1000)
    if "exclusiveMinimum" in schema and low_milli == low * 1000:
        low_milli += 1
    if "exclusiveMaximum" in schema and high_milli == high * 1000:
        high_milli -= 1
    return st.integers(low_milli, high_milli).map(lambda milli: milli / 1000)


def _object(schema: Schema, *, partial: bool) -> st.SearchStrategy[dict[str, Any]]:
    properties: Mapping[str, Schema] = schema.get("properties", {})
    extra = schema.get("additionalProperties", False)
    required = [] if partial else [k for k in schema.get("required", []) if k in properties]
    optional = [k for k in properties if k not in required]
    fixed = st.fixed_dictionaries(
        {k: values_for(properties[k], partial=partial) for k in required},
        optional={k: values_for(properties[k], partial=partial) for k in optional},
    )
    if isinstance(extra, Mapping):
        free = st.dictionaries(
            KEY_TEXT.filter(lambda key: key not in properties),
            values_for(extra, partial=partial),
            max_size=3,
        )
        return st.builds(lambda a, b: {**b, **a}, fixed, free)
    return fixed


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def values_for(schema: Schema, *, partial: bool = True) -> st.SearchStrategy[Any]:
    """Values the schema accepts; ``partial`` leaves out required keys (merged over defaults)."""
    if "const" in schema:
        return st.just(schema["const"])
    if schema.get("contentMediaType") == SHELL:
        # Shell the user writes (a prologue): rendered verbatim, so only valid shell can render
        # a valid script. Realistic lines, with the quoting a user would write.
        return st.sampled_from(SHELL_LINES)
    if "enum" in schema:
        return st.sampled_from(list(schema["enum"]))
    for combinator in ("anyOf", "oneOf"):
        if combinator in schema:
            return st.one_of([values_for(s, partial=partial) for s in schema[combinator]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([values_for({**schema, "type": k}, partial=partial) for k in kind])
    if kind == "object":
        return _object(schema, partial=partial)
    if kind == "array":
        items = schema.get("items", {})
        return st.lists(
            values_for(items, partial=False),
            min_size=int(schema.get("minItems", 0)),
            max_size=min(int(schema.get("maxItems", 3)), 3),
            unique_by=_canonical if schema.get("uniqueItems") else None,
        )
    if kind == "string":
        return _string(schema)
    if kind == "integer":
        return _number(schema, integer=True)
    if kind == "number":
        return _number(schema, integer=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return st.one_of(st.none(), st.booleans(), st.integers(), PLAIN_TEXT)


def leaf_paths(
    schema: Schema, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], Schema]]:
    """Every key path of the schema's fixed properties with the schema at that path."""
    paths: list[tuple[tuple[str, ...], Schema]] = []
    for key, sub in schema.get("properties", {}).items():
        path = (*prefix, key)
        paths.append((path, sub))
        if sub.get("type") == "object":
            paths.extend(leaf_paths(sub, path))
    return paths


def wrong_type_value(schema: Schema) -> st.SearchStrategy[Any]:
    """A value of a JSON type the schema does not allow at all."""
    kinds = schema.get("type")
    allowed = set(kinds) if isinstance(kinds, list) else {kinds}
    if "enum" in schema or "const" in schema or None in allowed:
        allowed = {type(v).__name__ for v in schema.get("enum", [schema.get("const")])}
        allowed = {
            {"str": "string", "int": "integer", "bool": "boolean", "NoneType": "null"}.get(a, a)
            for a in allowed
        }
    candidates = {
        "string": st.just(["a", "list"]),
        "integer": st.just("not-a-number"),
        "number": st.just("not-a-number"),
        "boolean": st.just({"a": "mapping"}),
        "object": st.just(7),
        "array": st.just({"a": "mapping"}),
        "null": st.just(7),
    }
    # Pick a value whose type is outside `allowed` (integer passes as number).
    wrong = []
    if not allowed & {"integer", "number", "object"}:
        wrong.append(st.just(12345))
    if not allowed & {"object"}:
        wrong.append(st.just({"nested": {"deep": 1}}))
    if not allowed & {"array"}:
        wrong.append(st.just([1, "two"]))
    off_pattern = "\u00e9\u00e8 not in any enum or pattern !"
    # A permissive pattern (say, "no quotes or backslashes") accepts that text: not wrong there.
    if (
        not allowed & {"string"}
        or "enum" in schema
        or ("pattern" in schema and not re.search(schema["pattern"], off_pattern))
    ):
        wrong.append(st.just(off_pattern))
    if not wrong:
        wrong = [candidates.get(k, st.just(object())) for k in allowed]
    return st.one_of(wrong)


def out_of_range_value(schema: Schema) -> st.SearchStrategy[Any] | None:
    """A number just outside the schema's bounds, or None when it has none."""
    options = []
    step = 1 if schema.get("type") == "integer" else 0.5
    if "minimum" in schema:
        options.append(st.integers(1, 10**6).map(lambda d: schema["minimum"] - d * step))
    if "exclusiveMinimum" in schema:
        options.append(st.just(schema["exclusiveMinimum"]))
    if "maximum" in schema:
        options.append(st.integers(1, 10**6).map(lambda d: schema["maximum"] + d * step))
    if "exclusiveMaximum" in schema:
        options.append(st.just(schema["exclusiveMaximum"]))
    if "maxLength" in schema:
        options.append(st.just("a" * (int(schema["maxLength"]) + 1)))
    return st.one_of(options) if options else None
