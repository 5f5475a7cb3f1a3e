"""Property: any values file or --set gives a valid render or exit 2 naming the key.

For every backend under templates/, generated input goes through the real command line
(``dask_deploy.cli.main``, in-process so a thousand cases take seconds): values drawn from
the backend's own schema (given as a YAML file or as ``--set``), and broken input (unknown
keys, wrong types, out-of-range numbers, malformed ``--set``, malformed YAML). The outcome
is always exit 0 with every file rendered and passing that backend's validators, or exit 2
with one line naming the key, no traceback, and nothing written. A few cases run the
installed ``dask-deploy`` as a subprocess to pin the same behaviour end to end.
"""

from __future__ import annotations

import copy
import functools
import json
import string
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dask_deploy import cli, values
from dask_deploy.render import RECORD_FILE, checksums, output_name, template_names
from render_support import run_cli_in_process

from .strategies import leaf_paths, out_of_range_value, values_for, wrong_type_value
from .validators import CHECKS, shellcheck

pytestmark = pytest.mark.fuzz

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates"
BACKENDS = sorted(
    p.name for p in TEMPLATES.iterdir() if p.is_dir() and (p / "values.schema.json").is_file()
)
SHELLCHECK = Path(sys.executable).parent / "shellcheck"

#: The Hypothesis profile (tests/conftest.py) decides how many cases and which: ``make test``
#: ("ci", 100 examples) derives a fixed set from each test, ``make fuzz`` ("fuzz") draws five
#: times as many at random. Per backend in ``make test``: VALID_CASES + BROKEN_CASES = 1000.
#: No shrinking: a failure prints the generated input as is, within the tier's time budget.
SCALE = settings.default.max_examples
VALID_CASES = 4 * SCALE
BROKEN_CASES = 6 * SCALE
SHELLCHECK_CASES = SCALE // 4
FUZZ = settings(
    phases=[Phase.explicit, Phase.generate],
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture(autouse=True)
def schema_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check each values.schema.json against the meta-schema once, not once per case.

    ``load_schema`` re-validates the schema file itself on every render (~0.15 s); the
    files do not change during the run, so each case gets a fresh copy of the first load.
    """
    loaded = functools.cache(values.load_schema)
    monkeypatch.setattr(values, "load_schema", lambda path: copy.deepcopy(loaded(path)))


@pytest.fixture(autouse=True)
def parser_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build the command line's parser once per subcommand, not once per case.

    ``cli.main`` builds its argparse parser on every call (~3 ms, a third of a broken-input
    case: argparse looks up a gettext translation for every help string). A parser parses any
    number of command lines, each into a fresh namespace, so the cases share one.
    """
    monkeypatch.setattr(cli, "build_parser", functools.cache(cli.build_parser))


@functools.cache
def schema(backend: str) -> dict[str, Any]:
    """The backend's values schema (read once: strategies only read it)."""
    return dict(json.loads((TEMPLATES / backend / "values.schema.json").read_text()))


def expected_files(backend: str) -> list[str]:
    return sorted(output_name(n) for n in template_names(TEMPLATES / backend))


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str
    files: dict[str, str]
    leftovers: list[str]


def run_render(
    backend: str, *, values_text: str | None = None, sets: Sequence[str] = ()
) -> Outcome:
    """``dask-deploy render`` in-process into a fresh folder; what it printed and wrote."""
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        argv = ["render", "--backend", backend, "--out", str(work / "out")]
        if values_text is not None:
            (work / "my-values.yaml").write_text(values_text)
            argv += ["--values", str(work / "my-values.yaml")]
        for expression in sets:
            argv += ["--set", expression]
        ran = run_cli_in_process(argv)
        out = work / "out"
        files = (
            {p.relative_to(out).as_posix(): p.read_text() for p in out.rglob("*") if p.is_file()}
            if out.is_dir()
            else {}
        )
        # What a render writes beside the manifests: the record of what it wrote, so that a
        # later render can tell hand edits apart. It must name exactly the manifests.
        record = files.pop(RECORD_FILE, None)
        if files:
            assert record == checksums(files), "the render record does not match the files"
        leftovers = sorted(
            p.name for p in work.iterdir() if p.name not in ("my-values.yaml", "out")
        )
        return Outcome(ran.returncode, ran.stdout, ran.stderr, files, leftovers)


def assert_valid_render(backend: str, outcome: Outcome) -> None:
    assert outcome.code == 0, outcome.stderr
    assert sorted(outcome.files) == expected_files(backend)
    assert outcome.leftovers == []
    CHECKS[backend](outcome.files)


def assert_rejected(outcome: Outcome, *names: str) -> None:
    """Exit 2, one error line naming one of ``names``, no traceback, nothing written."""
    assert outcome.code == 2, f"exit {outcome.code}, stderr: {outcome.stderr}"
    assert "Traceback" not in outcome.stderr
    assert outcome.files == {} and outcome.leftovers == [], "partial output left behind"
    error_lines = [line for line in outcome.stderr.splitlines() if "error" in line]
    assert len(error_lines) == 1, outcome.stderr
    assert any(name in error_lines[0] for name in names), (
        f"error does not name any of {names}: {error_lines[0]}"
    )


def nest(path: Sequence[str], value: Any) -> dict[str, Any]:
    result: Any = value
    for key in reversed(path):
        result = {key: result}
    return dict(result)


def keys_of(values: Any, prefix: str = "") -> set[str]:
    """Every dotted key path (and key name) in a nested mapping."""
    names: set[str] = set()
    if isinstance(values, Mapping):
        for key, sub in values.items():
            dotted = f"{prefix}.{key}" if prefix else str(key)
            names |= {dotted, str(key)} | keys_of(sub, dotted)
    return names


def set_value_text(value: Any) -> str | None:
    """The ``--set`` spelling of a scalar (quoted strings stay strings); None if not a scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return f'"{value}"'
    return None


def leaves(values: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    if isinstance(values, Mapping) and values:
        return [leaf for k, v in values.items() for leaf in leaves(v, (*prefix, k))]
    return [(prefix, values)]


SET_KEY = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True)


# --------------------------------------------------------------------------- valid input


@pytest.mark.parametrize("backend", BACKENDS)
def test_values_from_the_schema_render_valid_output_or_name_the_key(backend: str) -> None:
    values_schema = schema(backend)

    @settings(FUZZ, max_examples=VALID_CASES)
    @given(override=values_for(values_schema), as_sets=st.booleans())
    def check(override: dict[str, Any], as_sets: bool) -> None:
        scalar_leaves = [(p, set_value_text(v)) for p, v in leaves(override) if p]
        if as_sets and override and all(text is not None for _, text in scalar_leaves):
            sets = [".".join(p) + "=" + str(text) for p, text in scalar_leaves]
            outcome = run_render(backend, sets=sets)
        else:
            text = yaml.safe_dump(override, sort_keys=False)
            outcome = run_render(backend, values_text=text)
        if outcome.code == 2:
            # Schema-valid but refused by a rule across keys (e.g. minimum > maximum).
            assert_rejected(outcome, *keys_of(override))
        else:
            assert_valid_render(backend, outcome)

    check()


# --------------------------------------------------------------------------- invalid input


@st.composite
def broken_input(draw: st.DrawFn, backend: str) -> tuple[dict[str, Any], list[str], list[str]]:
    """(run_render kwargs, --set list, names the error may cite) for one kind of bad input."""
    values_schema = schema(backend)
    paths = [(p, s) for p, s in leaf_paths(values_schema)]
    kind = draw(
        st.sampled_from(
            ["unknown_key", "wrong_type", "out_of_range", "malformed_set", "malformed_yaml"]
        )
    )
    if kind == "unknown_key":
        objects = [((), values_schema)] + [(p, s) for p, s in paths if s.get("type") == "object"]
        parent, parent_schema = draw(
            st.sampled_from(
                [o for o in objects if not isinstance(o[1].get("additionalProperties"), dict)]
            )
        )
        key = draw(SET_KEY.filter(lambda k: k not in parent_schema.get("properties", {})))
        path = (*parent, key)
        value = draw(st.one_of(st.integers(), st.booleans(), st.just("x")))
    else:
        candidates = paths
        if kind == "out_of_range":
            candidates = [(p, s) for p, s in paths if out_of_range_value(s) is not None]
        path, leaf_schema = draw(st.sampled_from(candidates))
        if kind == "wrong_type":
            value = draw(wrong_type_value(leaf_schema))
        elif kind == "out_of_range":
            strategy = out_of_range_value(leaf_schema)
            assert strategy is not None
            value = draw(strategy)
        else:
            value = None
    dotted = ".".join(path) if kind not in ("malformed_set", "malformed_yaml") else ""
    if kind == "malformed_set":
        good_path = ".".join(draw(st.sampled_from(paths))[0])
        expression = draw(
            st.sampled_from(
                [
                    good_path,  # no '='
                    f"={draw(SET_KEY)}",  # empty key
                    f"{good_path}..x=1",
                    f"{good_path}.=1",
                    f"{good_path}[x]=1",
                    f"[0]{good_path}=1",
                    f"{good_path}[0]x=1",
                    f"{good_path} x=1",
                    f'{good_path}="unclosed',
                    f"{good_path}='unclosed",
                ]
            )
        )
        return {"sets": [expression]}, [expression], ["--set"]
    if kind == "malformed_yaml":
        key = ".".join(draw(st.sampled_from(paths))[0]).split(".")[0]
        text = draw(
            st.sampled_from(
                [
                    f"{key}: [unclosed\n",
                    f"{key}:\n  a: 1\n b: 2\n",
                    f"{key}: {{a: 1\n",
                    f"{key}: 1\n{key}: 2\n",  # a key twice
                    "- a list\n- at the top\n",
                    f'{key}: "unterminated\n',
                    "\t" + key + ": tab\n",
                    f"{key}: *undefined_alias\n",
                    "just a string\n",
                ]
            )
        )
        return {"values_text": text}, [], ["my-values.yaml", "--values"]
    as_set = draw(st.booleans()) and set_value_text(value) is not None
    if as_set:
        return {"sets": [f"{dotted}={set_value_text(value)}"]}, [], [dotted]
    return {"values_text": yaml.safe_dump(nest(path, value))}, [], [dotted]


@pytest.mark.parametrize("backend", BACKENDS)
def test_broken_input_exits_2_naming_the_key_and_writes_nothing(backend: str) -> None:
    @settings(FUZZ, max_examples=BROKEN_CASES)
    @given(case=broken_input(backend))
    def check(case: tuple[dict[str, Any], list[str], list[str]]) -> None:
        kwargs, _expressions, names = case
        assert_rejected(run_render(backend, **kwargs), *names)

    check()


# --------------------------------------------------------------------------- slow validators


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("lsf", "pbs", "sge", "slurm")])
def test_sampled_batch_scripts_pass_shellcheck(backend: str) -> None:
    @settings(FUZZ, max_examples=SHELLCHECK_CASES)
    @given(override=values_for(schema(backend)))
    def check(override: dict[str, Any]) -> None:
        outcome = run_render(backend, values_text=yaml.safe_dump(override))
        if outcome.code == 0:
            shellcheck(outcome.files, SHELLCHECK)

    check()


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("command", "ssh")])
def test_sampled_ssh_and_command_scripts_pass_shellcheck(backend: str) -> None:
    @settings(FUZZ, max_examples=25)
    @given(override=values_for(schema(backend)))
    def check(override: dict[str, Any]) -> None:
        outcome = run_render(backend, values_text=yaml.safe_dump(override))
        if outcome.code == 0:
            shellcheck(outcome.files, SHELLCHECK)

    check()


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize(
    ("backend", "arguments", "named"),
    [
        (b, args, named)
        for b in BACKENDS
        for args, named in [
            (["--set", "no_such_key=1"], "no_such_key"),
            (["--set", "scaler.maximum=-1"], "scaler.maximum"),
            (["--set", "scaler..maximum=1"], "--set"),
        ]
    ],
)
def test_installed_command_exits_2_without_traceback(
    backend: str, arguments: list[str], named: str, tmp_path: Path
) -> None:
    command = Path(sys.executable).parent / "dask-deploy"
    result = subprocess.run(
        [str(command), "render", "--backend", backend, *arguments, "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()
    assert all(ch in string.printable for ch in result.stderr)
