"""render.py: filters, which templates render, StrictUndefined errors and the atomic write."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from dask_deploy import SettingsError
from dask_deploy import render as render_module
from dask_deploy.render import (
    RenderError,
    make_environment,
    render,
    shell_quote,
    template_names,
    to_json,
    to_yaml,
    trunc63,
    write_atomically,
)
from dask_deploy.values import resolve_values

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "deployment": {"description": "Names everything.", "type": "string"},
        "env": {
            "description": "Environment.",
            "type": "object",
            "additionalProperties": {"type": "string"},
        },
    },
}


def make_backend(root: Path, templates: dict[str, str]) -> Path:
    """A throwaway backend ``toy`` under ``root`` with the given template files."""
    (root / "_common").mkdir(parents=True, exist_ok=True)
    (root / "_common" / "_helpers.j2").write_text(
        (Path(__file__).resolve().parents[2] / "templates/_common/_helpers.j2").read_text()
    )
    folder = root / "toy"
    folder.mkdir(exist_ok=True)
    (folder / "values.yaml").write_text("deployment: dask\nenv: {A: '1'}\n")
    (folder / "values.schema.json").write_text(json.dumps(SCHEMA))
    (folder / "README.md").write_text("not rendered\n")
    for name, text in templates.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return root


GOOD = {
    "app-config.yaml.j2": (
        '{% import "_common/_helpers.j2" as h %}\n'
        "{{ h.header(backend, version) }}\n"
        "name: {{ h.name(values, 'scheduler') }}\n"
        "env:\n  {{ values.env | to_yaml | indent(2) }}\n"
    ),
    "worker-job.sh.j2": (
        "#!/bin/bash\nexec dask worker --name {{ values.deployment | shell_quote }}\n"
    ),
    "_macros.j2": "{% macro x() %}never rendered{% endmacro %}\n",
    "sub/extra-pod.json.j2": "{{ {'name': values.deployment} | to_json }}\n",
    "_private/ignored.yaml.j2": "{{ undefined_thing }}\n",
}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_backend(tmp_path / "templates", GOOD)


# --------------------------------------------------------------------------- filters


def test_trunc63_cuts_to_63_without_trailing_dash() -> None:
    assert trunc63("short") == "short"
    assert trunc63("a" * 70) == "a" * 63
    assert trunc63("a" * 62 + "-bcd") == "a" * 62
    assert trunc63("a" * 61 + "--b") == "a" * 61
    assert len(trunc63("x" * 200)) == 63


def test_to_json_keeps_key_order_and_indents() -> None:
    assert to_json({"b": 1, "a": [True, None]}) == (
        '{\n  "b": 1,\n  "a": [\n    true,\n    null\n  ]\n}'
    )


def test_to_yaml_is_block_style_in_order_without_final_newline() -> None:
    assert to_yaml({"b": 1, "a": {"c": [1, 2]}}) == "b: 1\na:\n  c:\n  - 1\n  - 2"
    assert to_yaml({}) == "{}"
    assert to_yaml("word") == "word"
    assert yaml.safe_load(to_yaml({"x": "1.0", "y": "true"})) == {"x": "1.0", "y": "true"}


def test_shell_quote() -> None:
    assert shell_quote("plain") == "plain"
    assert shell_quote("a b") == "'a b'"
    assert shell_quote("it's") == "'it'\"'\"'s'"
    assert shell_quote(8786) == "8786"


def test_environment_follows_the_contract(root: Path) -> None:
    environment = make_environment(root)
    assert environment.keep_trailing_newline
    assert environment.trim_blocks and environment.lstrip_blocks
    text = environment.from_string("{% if true %}\n  x\n{% endif %}\n").render()
    assert text == "  x\n"


# --------------------------------------------------------------------------- rendering


def test_template_names_skip_underscore_files_and_folders(root: Path) -> None:
    assert template_names(root / "toy") == [
        "app-config.yaml.j2",
        "sub/extra-pod.json.j2",
        "worker-job.sh.j2",
    ]


def test_render_writes_each_template_without_j2(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = render(resolve_values("toy", root=root), out, version="9.9")
    assert sorted(path.relative_to(out).as_posix() for path in result.files) == [
        "app-config.yaml",
        "sub/extra-pod.json",
        "worker-job.sh",
    ]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "app-config.yaml",
        "sub/extra-pod.json",
        "worker-job.sh",
    ]
    config = (out / "app-config.yaml").read_text()
    assert config.splitlines()[0] == (
        "# Rendered by dask-deploy 9.9 from templates/toy; edit freely."
    )
    assert yaml.safe_load(config) == {"name": "dask-scheduler", "env": {"A": "1"}}
    assert json.loads((out / "sub/extra-pod.json").read_text()) == {"name": "dask"}
    script = out / "worker-job.sh"
    assert script.read_text() == "#!/bin/bash\nexec dask worker --name dask\n"
    assert script.stat().st_mode & stat.S_IXUSR, "scripts are executable"
    assert not (out / "app-config.yaml").stat().st_mode & stat.S_IXUSR


def test_strict_undefined_names_template_line_and_name(tmp_path: Path) -> None:
    root = make_backend(
        tmp_path / "templates",
        {"a-config.yaml.j2": "ok: 1\nport: {{ values.scheduler.port }}\n"},
    )
    out = tmp_path / "out"
    with pytest.raises(RenderError) as error:
        render(resolve_values("toy", root=root), out)
    message = str(error.value)
    assert "templates/toy/a-config.yaml.j2, line 2" in message
    assert "scheduler" in message
    assert not out.exists()


def test_undefined_inside_a_macro_names_the_macro_file(tmp_path: Path) -> None:
    root = make_backend(
        tmp_path / "templates",
        {
            "_m.j2": "{% macro port(v) %}\n{{ v.nope }}\n{% endmacro %}\n",
            "a-config.yaml.j2": '{% import "toy/_m.j2" as m %}\n{{ m.port(values) }}\n',
        },
    )
    with pytest.raises(RenderError, match=r"templates/toy/_m\.j2, line 2.*nope"):
        render(resolve_values("toy", root=root), tmp_path / "out")


def test_syntax_error_names_template_and_line(tmp_path: Path) -> None:
    root = make_backend(tmp_path / "templates", {"a-config.yaml.j2": "a\n{% if %}\n"})
    with pytest.raises(RenderError, match=r"templates/toy/a-config\.yaml\.j2, line 2: .*syntax"):
        render(resolve_values("toy", root=root), tmp_path / "out")


def test_fail_global_stops_with_its_message(tmp_path: Path) -> None:
    root = make_backend(
        tmp_path / "templates", {"a-config.yaml.j2": '{{ fail("tls.enabled needs tls.ca_file") }}'}
    )
    with pytest.raises(RenderError, match=r"tls\.enabled needs tls\.ca_file"):
        render(resolve_values("toy", root=root), tmp_path / "out")


def test_backend_without_templates_is_an_error(tmp_path: Path) -> None:
    root = make_backend(tmp_path / "templates", {})
    with pytest.raises(RenderError, match="no template"):
        render(resolve_values("toy", root=root), tmp_path / "out")


# --------------------------------------------------------------------------- atomic write


def test_failed_render_leaves_existing_out_untouched(tmp_path: Path) -> None:
    root = make_backend(
        tmp_path / "templates",
        {"a-config.yaml.j2": "fine\n", "b-config.yaml.j2": "{{ values.missing }}\n"},
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "a-config.yaml").write_text("before\n")
    with pytest.raises(RenderError):
        render(resolve_values("toy", root=root), out)
    assert (out / "a-config.yaml").read_text() == "before\n"
    assert sorted(os.listdir(tmp_path)) == ["out", "templates"], "no temporary folder is left"


def test_rerender_replaces_out_as_a_whole(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    render(resolve_values("toy", root=root), out)
    (out / "worker-job.sh").write_text("edited\n")
    render(resolve_values("toy", root=root), out)
    assert (out / "worker-job.sh").read_text().startswith("#!/bin/bash")
    assert sorted(os.listdir(tmp_path)) == ["out", "templates"]


def test_out_holding_other_files_is_refused(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("precious\n")
    with pytest.raises(SettingsError) as error:
        render(resolve_values("toy", root=root), out)
    assert error.value.key == "--out"
    assert "thesis.tex" in error.value.allowed
    assert (out / "thesis.tex").read_text() == "precious\n"
    assert sorted(os.listdir(out)) == ["thesis.tex"]


def test_out_that_is_a_file_is_refused(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("x")
    with pytest.raises(SettingsError, match="--out"):
        render(resolve_values("toy", root=root), out)
    assert out.read_text() == "x"


def test_write_failure_midway_leaves_no_partial_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.yaml").write_text("old\n")

    def broken_swap(staging: Path, target: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(render_module, "_swap_into_place", broken_swap)
    with pytest.raises(OSError, match="disk full"):
        write_atomically(out, {"a.yaml": "new\n", "b.yaml": "new\n"})
    assert (out / "a.yaml").read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_write_creates_missing_parents(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "er" / "out"
    written = write_atomically(out, {"a.yaml": "x\n"})
    assert written == [out / "a.yaml"]
    assert (out / "a.yaml").read_text() == "x\n"


def test_python_error_in_a_template_names_its_line(tmp_path: Path) -> None:
    root = make_backend(
        tmp_path / "templates", {"a-config.yaml.j2": "a: 1\nb: {{ values.deployment + 1 }}\n"}
    )
    with pytest.raises(RenderError, match=r"templates/toy/a-config\.yaml\.j2, line 2: TypeError"):
        render(resolve_values("toy", root=root), tmp_path / "out")


def test_golden_regenerate_renders_scenarios_and_prunes(root: Path, tmp_path: Path) -> None:
    from dask_deploy.golden import regenerate

    scenarios, golden = tmp_path / "scenarios", tmp_path / "golden"
    (scenarios / "toy").mkdir(parents=True)
    (scenarios / "toy" / "defaults-values.yaml").write_text("{}\n")
    (scenarios / "toy" / "named-values.yaml").write_text("deployment: other\n")
    (golden / "toy" / "vanished").mkdir(parents=True)
    (golden / "toy" / "named").mkdir(parents=True)
    (golden / "toy" / "named" / "renamed-long-ago.yaml").write_text("stale\n")

    written = regenerate(scenarios, golden, templates=root)

    assert sorted(p.relative_to(golden).as_posix() for p in golden.rglob("*") if p.is_file()) == [
        "toy/defaults/app-config.yaml",
        "toy/defaults/sub/extra-pod.json",
        "toy/defaults/worker-job.sh",
        "toy/named/app-config.yaml",
        "toy/named/sub/extra-pod.json",
        "toy/named/worker-job.sh",
    ]
    assert len(written) == 6
    assert "other-scheduler" in (golden / "toy/named/app-config.yaml").read_text()


def test_golden_regenerate_changes_nothing_when_a_scenario_fails(
    root: Path, tmp_path: Path
) -> None:
    from dask_deploy.golden import regenerate

    scenarios, golden = tmp_path / "scenarios", tmp_path / "golden"
    (scenarios / "toy").mkdir(parents=True)
    (scenarios / "toy" / "a-values.yaml").write_text("{}\n")
    (scenarios / "toy" / "b-values.yaml").write_text("nope: 1\n")
    (golden / "toy" / "a").mkdir(parents=True)
    (golden / "toy" / "a" / "app-config.yaml").write_text("old\n")
    with pytest.raises(SettingsError, match="nope"):
        regenerate(scenarios, golden, templates=root)
    assert (golden / "toy" / "a" / "app-config.yaml").read_text() == "old\n"


def test_missing_import_names_the_importing_template(tmp_path: Path) -> None:
    root = make_backend(
        tmp_path / "templates", {"a-config.yaml.j2": 'x\n{% import "toy/_gone.j2" as g %}\n'}
    )
    with pytest.raises(
        RenderError,
        match=r"templates/toy/a-config\.yaml\.j2, line 2: .*toy/_gone\.j2, which is not",
    ):
        render(resolve_values("toy", root=root), tmp_path / "out")


def test_common_helpers() -> None:
    environment = make_environment(Path(__file__).resolve().parents[2] / "templates")
    template = environment.from_string(
        '{% import "_common/_helpers.j2" as h %}'
        "{{ h.header('slurm', '1.2') }}|{{ h.origin('k', '1') }}|{{ h.name(values, 'worker') }}|"
        "{{ h.scheduler_address(values, 'sched') }}"
    )
    plain = {"deployment": "d" * 60, "tls": {"enabled": False}, "scheduler": {"port": 8786}}
    assert template.render(values=plain).split("|") == [
        "# Rendered by dask-deploy 1.2 from templates/slurm; edit freely.",
        "Rendered by dask-deploy 1 from templates/k; edit freely.",
        "d" * 60 + "-wo",
        "tcp://sched:8786",
    ]
    with_tls = {**plain, "tls": {"enabled": True}}
    assert template.render(values=with_tls).endswith("|tls://sched:8786")
