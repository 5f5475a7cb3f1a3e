"""values.py: the --set parser, deep merge, file loading and schema errors, on a tiny backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dask_deploy import SettingsError, UserInputError
from dask_deploy.values import (
    SetAssignment,
    apply_set,
    available_backends,
    deep_merge,
    load_values_file,
    parse_set,
    resolve_values,
    templates_root,
)

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "deployment": {
            "description": "Names everything.",
            "type": "string",
            "pattern": "^[a-z0-9-]+$",
        },
        "image": {
            "description": "Container image.",
            "type": "object",
            "additionalProperties": False,
            "properties": {"tag": {"description": "Tag.", "type": "string"}},
        },
        "scaler": {
            "description": "Scaler settings.",
            "type": "object",
            "additionalProperties": False,
            "required": ["maximum"],
            "properties": {
                "policy": {"description": "Policy.", "enum": ["adaptive", "fixed"]},
                "minimum": {"description": "Fewest.", "type": "integer", "minimum": 0},
                "maximum": {"description": "Most.", "type": "integer", "minimum": 0},
                "interval": {"description": "Seconds.", "type": "number", "exclusiveMinimum": 0},
            },
        },
        "worker": {
            "description": "Workers.",
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "extra_args": {
                    "description": "Arguments.",
                    "type": "array",
                    "items": {"type": "string"},
                },
                "env": {
                    "description": "Environment.",
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                },
            },
        },
    },
}

DEFAULTS = """\
# yaml-language-server: $schema=values.schema.json
deployment: dask
image:
  tag: "0.1.0"
scaler:
  policy: adaptive
  minimum: 0
  maximum: 10
  interval: 1.0
worker:
  extra_args: []
  env: {}
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A templates root with one backend, ``toy``."""
    templates = tmp_path / "templates"
    (templates / "_common").mkdir(parents=True)
    toy = templates / "toy"
    toy.mkdir()
    (toy / "values.yaml").write_text(DEFAULTS)
    (toy / "values.schema.json").write_text(json.dumps(SCHEMA))
    return templates


def error_text(error: pytest.ExceptionInfo[UserInputError]) -> str:
    return str(error.value)


# --------------------------------------------------------------------------- --set parser


@pytest.mark.parametrize(
    ("expression", "path", "value"),
    [
        ("a.b=1", ("a", "b"), 1),
        ("a=-3", ("a",), -3),
        ("a=1.5", ("a",), 1.5),
        ("a=1e3", ("a",), 1000.0),
        ("a=true", ("a",), True),
        ("a=False", ("a",), False),
        ("a=null", ("a",), None),
        ("a=", ("a",), ""),
        ("a=hello world", ("a",), "hello world"),
        ("a=0.1.0", ("a",), "0.1.0"),
        ("a=007", ("a",), "007"),
        ('a="1.0"', ("a",), "1.0"),
        ("a='true'", ("a",), "true"),
        ("a=x=y", ("a",), "x=y"),
        ("a.b[0]=x", ("a", "b", 0), "x"),
        ("a[1][0].c=2", ("a", 1, 0, "c"), 2),
        ("a={x,2,true}", ("a",), ["x", 2, True]),
        ("a={}", ("a",), []),
        (r"labels.app\.kubernetes\.io/name=x", ("labels", "app.kubernetes.io/name"), "x"),
        ("env.DASK_LOGGING__DISTRIBUTED=debug", ("env", "DASK_LOGGING__DISTRIBUTED"), "debug"),
    ],
)
def test_parse_set(expression: str, path: tuple[object, ...], value: object) -> None:
    assert parse_set(expression) == SetAssignment(path, value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("expression", "why"),
    [
        ("noequals", "no '='"),
        ("=1", "empty"),
        ("a..b=1", "empty key name"),
        (".a=1", "empty key name"),
        ("a.=1", "ends with '.'"),
        ("a[x]=1", "[<number>]"),
        ("a[-1]=1", "[<number>]"),
        ("a[0=1", "[<number>]"),
        ("a]=1", "unexpected ']'"),
        ("[0]=1", "needs a key"),
        ("a[0]b=1", "after ']'"),
        ("a b=1", "no spaces"),
        ('a="open', "not closed"),
    ],
)
def test_malformed_set_names_expression_and_syntax(expression: str, why: str) -> None:
    with pytest.raises(SettingsError) as error:
        parse_set(expression)
    assert error.value.key == "--set"
    assert error.value.value == expression
    assert "key.path=value" in error.value.allowed
    assert why in error.value.allowed


def test_apply_set_creates_nested_mappings_and_appends_to_lists() -> None:
    values = {"worker": {"extra_args": ["--a"]}}
    updated = apply_set(values, parse_set("worker.extra_args[1]=--b"))
    updated = apply_set(updated, parse_set("scaler.maximum=3"))
    updated = apply_set(updated, parse_set("new[0].name=x"))
    assert updated == {
        "worker": {"extra_args": ["--a", "--b"]},
        "scaler": {"maximum": 3},
        "new": [{"name": "x"}],
    }
    assert values == {"worker": {"extra_args": ["--a"]}}, "the input is not modified"


def test_apply_set_replaces_an_item() -> None:
    assert apply_set({"a": [1, 2]}, parse_set("a[0]=9")) == {"a": [9, 2]}


def test_apply_set_index_past_the_end_names_the_key() -> None:
    with pytest.raises(SettingsError) as error:
        apply_set({"a": [1]}, parse_set("a[3]=9"))
    assert error.value.key == "a[3]"
    assert "an index from 0 to 1" in error.value.allowed


# --------------------------------------------------------------------------- merge


def test_deep_merge_merges_mappings_and_replaces_lists_and_scalars() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1, "e": {"f": 1}}
    override = {"a": {"c": [3]}, "d": None, "e": 5, "g": {"h": 1}}
    assert deep_merge(base, override) == {
        "a": {"b": 1, "c": [3]},
        "d": None,
        "e": 5,
        "g": {"h": 1},
    }
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1, "e": {"f": 1}}


def test_deep_merge_does_not_share_nested_objects() -> None:
    override = {"a": {"b": [1]}}
    merged = deep_merge({}, override)
    merged["a"]["b"].append(2)
    assert override == {"a": {"b": [1]}}


# --------------------------------------------------------------------------- files


def test_empty_values_file_is_empty_mapping(tmp_path: Path) -> None:
    file = tmp_path / "v.yaml"
    file.write_text("# nothing\n")
    assert load_values_file(file) == {}


def test_missing_values_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as error:
        load_values_file(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(error.value)
    assert "no such file" in str(error.value)


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("scaler:\n  maximum: [1\n")
    with pytest.raises(UserInputError, match=r"bad\.yaml: malformed YAML at line \d+, column"):
        load_values_file(file)


def test_duplicate_key_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "dup.yaml"
    file.write_text("scaler:\n  maximum: 1\n  maximum: 2\n")
    with pytest.raises(UserInputError, match=r"dup\.yaml: malformed YAML.*'maximum' twice"):
        load_values_file(file)


def test_top_level_list_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "list.yaml"
    file.write_text("- a\n")
    with pytest.raises(UserInputError, match=r"list\.yaml: got a list at the top level"):
        load_values_file(file)


# --------------------------------------------------------------------------- resolve + schema


def test_resolve_order_defaults_file_then_set(root: Path, tmp_path: Path) -> None:
    file = tmp_path / "my.yaml"
    file.write_text("scaler: {maximum: 20, minimum: 2}\n")
    resolved = resolve_values("toy", values_files=[file], sets=["scaler.maximum=30"], root=root)
    assert resolved.values["scaler"] == {
        "policy": "adaptive",
        "minimum": 2,
        "maximum": 30,
        "interval": 1.0,
    }


@pytest.mark.parametrize(
    ("sets", "key", "value", "allowed"),
    [
        (["no_such_key=1"], "no_such_key", 1, "unknown key; allowed keys at the top level are"),
        (["scaler.maxx=1"], "scaler.maxx", 1, "allowed keys in scaler are policy, minimum"),
        (["scaler.maximum=-1"], "scaler.maximum", -1, "an integer >= 0"),
        (["scaler.maximum=abc"], "scaler.maximum", "abc", "an integer"),
        (["scaler.maximum=true"], "scaler.maximum", True, "an integer"),
        (["scaler.interval=0"], "scaler.interval", 0, "a number > 0"),
        (["scaler.policy=eager"], "scaler.policy", "eager", 'one of "adaptive", "fixed"'),
        (["deployment=Big_Name"], "deployment", "Big_Name", "a string matching ^[a-z0-9-]+$"),
        (["image.tag=1.0"], "image.tag", 1.0, 'quote it to keep it a string: image.tag="1.0"'),
        (["worker.extra_args[0]=5"], "worker.extra_args[0]", 5, "a string"),
        (["worker.env.X=1"], "worker.env.X", 1, "a string"),
        (["scaler=3"], "scaler", 3, "a mapping"),
        (["scaler.minimum=11"], "scaler.minimum", 11, "at most scaler.maximum, which is 10"),
        (["scaler.maximum=null"], "scaler.maximum", None, "an integer"),
    ],
)
def test_schema_error_names_key_value_and_allowed(
    root: Path, sets: list[str], key: str, value: object, allowed: str
) -> None:
    with pytest.raises(SettingsError) as error:
        resolve_values("toy", sets=sets, root=root)
    assert error.value.key == key
    assert error.value.value == value
    assert type(error.value.value) is type(value)
    assert allowed in error.value.allowed
    assert str(error.value).startswith(f"{key}: got {value!r}, expected ")


def test_missing_required_key_is_named(root: Path, tmp_path: Path) -> None:
    defaults = root / "toy" / "values.yaml"
    defaults.write_text(defaults.read_text().replace("  maximum: 10\n", ""))
    with pytest.raises(SettingsError, match=r"^scaler\.maximum: got nothing, expected a value"):
        resolve_values("toy", root=root)


def test_several_errors_make_one_message_naming_each(root: Path) -> None:
    with pytest.raises(UserInputError) as error:
        resolve_values("toy", sets=["a=1", "scaler.maximum=-1"], root=root)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("a: got 1")
    assert "and 1 more: scaler.maximum: got -1" in message


def test_unknown_backend_lists_backends_with_templates(root: Path) -> None:
    (root / "other").mkdir()
    (root / "other" / "values.yaml").write_text("{}\n")
    with pytest.raises(SettingsError) as error:
        resolve_values("nope", root=root)
    assert error.value.key == "--backend"
    assert error.value.value == "nope"
    assert error.value.allowed == "one of the backends with templates: other, toy"


def test_available_backends_skips_common_and_stray_folders(root: Path) -> None:
    (root / "notes").mkdir()
    assert available_backends(root) == ["toy"]


def test_bad_set_is_reported_before_any_file_is_read(root: Path, tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as error:
        resolve_values("toy", values_files=[tmp_path / "missing.yaml"], sets=["x"], root=root)
    assert error.value.key == "--set"


def test_templates_root_from_environment(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASK_DEPLOY_TEMPLATES", str(root))
    assert templates_root() == root
    monkeypatch.setenv("DASK_DEPLOY_TEMPLATES", str(root / "missing"))
    with pytest.raises(SettingsError, match="DASK_DEPLOY_TEMPLATES"):
        templates_root()


def test_templates_root_defaults_to_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASK_DEPLOY_TEMPLATES", raising=False)
    assert templates_root() == Path(__file__).resolve().parents[2] / "templates"


def test_package_ships_the_templates_for_non_editable_installs() -> None:
    """``dask_deploy/templates`` links to the checkout's templates/, so wheels include them."""
    import dask_deploy

    shipped = Path(dask_deploy.__file__).resolve().parent / "templates"
    assert shipped.resolve() == (Path(__file__).resolve().parents[2] / "templates").resolve()


@pytest.mark.parametrize(
    ("text", "where"), [("on: 1\n", "key"), ("worker:\n  env:\n    8786: x\n", "key in worker.env")]
)
def test_non_string_keys_are_refused(tmp_path: Path, text: str, where: str) -> None:
    file = tmp_path / "v.yaml"
    file.write_text(text)
    with pytest.raises(SettingsError) as error:
        load_values_file(file)
    assert error.value.key == f"--values {file}: {where}"
    assert "a string key; quote it" in error.value.allowed
