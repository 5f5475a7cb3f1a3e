"""Bad input to the real ``dask-deploy render``: exit 2, one clear line, nothing written.

Every case runs against every backend that has templates, with OUT holding an earlier render
that must come through unchanged. On the first backend each case runs the CLI in a
subprocess, as a user would; on the others the same entry point (``dask_deploy.cli.main``)
runs in-process, which tells the same exit code and output without a Python start per case.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from dask_deploy.render import RECORD_FILE, render
from dask_deploy.values import available_backends, resolve_values
from render_support import run_cli_in_process

REPO = Path(__file__).resolve().parents[2]
BACKENDS = available_backends(REPO / "templates")
PREFIX = "dask-deploy render: error: "


@dataclass(frozen=True)
class BadInput:
    """Arguments (``{tmp}`` is the test's folder), an optional values file, and what the
    one-line message must contain: the key path, the value given and what is allowed."""

    name: str
    args: tuple[str, ...]
    expected: tuple[str, ...]
    values_text: str | None = None


CASES = [
    BadInput(
        "unknown-key",
        ("--set", "no_such_key=1"),
        (
            "no_such_key: got 1, expected",
            "unknown key; allowed keys at the top level are",
            "scaler",
        ),
    ),
    BadInput(
        "unknown-nested-key",
        ("--set", "scaler.no_such_key=1"),
        ("scaler.no_such_key: got 1, expected", "allowed keys in scaler are", "maximum"),
    ),
    BadInput(
        "wrong-type",
        ("--set", "scaler.maximum=abc"),
        ("scaler.maximum: got 'abc', expected an integer",),
    ),
    BadInput(
        "out-of-range",
        ("--set", "scaler.maximum=-1"),
        ("scaler.maximum: got -1, expected an integer >= 0",),
    ),
    BadInput(
        "minimum-above-maximum",
        ("--set", "scaler.minimum=7", "--set", "scaler.maximum=3"),
        ("scaler.minimum: got 7, expected at most scaler.maximum, which is 3",),
    ),
    BadInput(
        "bad-deployment-name",
        ("--set", "deployment=Not_A_Name"),
        ("deployment: got 'Not_A_Name', expected a string matching",),
    ),
    BadInput(
        "unknown-key-in-file",
        ("--values", "{tmp}/my-values.yaml"),
        ("scaler.maxium: got 3, expected", "did you mean maximum?"),
        values_text="scaler:\n  maxium: 3\n",
    ),
    BadInput(
        "wrong-type-in-file",
        ("--values", "{tmp}/my-values.yaml"),
        ("worker.extra_args: got '--foo', expected a list",),
        values_text="worker:\n  extra_args: --foo\n",
    ),
    BadInput(
        "missing-values-file",
        ("--values", "{tmp}/absent.yaml"),
        ("--values: got '{tmp}/absent.yaml', expected an existing YAML file", "no such file"),
    ),
    BadInput(
        "malformed-yaml",
        ("--values", "{tmp}/my-values.yaml"),
        ("--values {tmp}/my-values.yaml: malformed YAML at line 3, column 9",),
        values_text="scaler:\n  maximum: 1\n    oops: 2\n",
    ),
    BadInput(
        "values-not-a-mapping",
        ("--values", "{tmp}/my-values.yaml"),
        ("--values {tmp}/my-values.yaml: got a list at the top level, expected a mapping",),
        values_text="- scaler.maximum=3\n",
    ),
    BadInput(
        "set-without-equals",
        ("--set", "noequals"),
        ("--set: got 'noequals', expected key.path=value (there is no '=')",),
    ),
    BadInput(
        "set-empty-key",
        ("--set", "a..b=1"),
        ("--set: got 'a..b=1', expected key.path=value (empty key name",),
    ),
    BadInput(
        "set-bad-index",
        ("--set", "a[x]=1"),
        ("--set: got 'a[x]=1', expected key.path=value (a list index must be [<number>]",),
    ),
]


def run_render(
    backend: str, args: list[str], out: Path, cwd: Path
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "dask_deploy.cli", "render", "--backend", backend]
    return subprocess.run(
        [*command, *args, "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def run_render_in_process(
    backend: str, args: list[str], out: Path, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """What ``run_render`` tells, from ``dask_deploy.cli.main`` called in this process."""
    return run_cli_in_process(["render", "--backend", backend, *args, "--out", str(out)], cwd)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (and the folder's own entries) by relative path."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes() if path.is_file() else b"<dir>"
        for path in sorted(folder.rglob("*"))
    }


def assert_one_clear_line(result: subprocess.CompletedProcess[str], expected: list[str]) -> None:
    shown = f"exit {result.returncode}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert result.returncode == 2, shown
    assert "Traceback" not in result.stderr, shown
    assert result.stdout == "", f"nothing may be listed as written\n{shown}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"one message, one line\n{shown}"
    assert lines[0].startswith(PREFIX), shown
    for fragment in expected:
        assert fragment in lines[0], f"{fragment!r} missing\n{shown}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_good_input_renders_and_lists_each_file(backend: str, tmp_path: Path) -> None:
    """The control: the command the bad cases vary works, prints each file, exits 0."""
    out = tmp_path / "out"
    result = run_render(backend, ["--set", "scaler.maximum=3"], out, tmp_path)
    assert result.returncode == 0, result.stderr
    listed = sorted(result.stdout.splitlines())
    written = sorted(
        str(path) for path in out.rglob("*") if path.is_file() and path.name != RECORD_FILE
    )
    assert listed == written and written, result.stdout
    assert (out / RECORD_FILE).is_file(), "the record of what was rendered is kept beside"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no temporary folder is left"


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_exits_2_with_one_clear_line_and_writes_nothing(
    backend: str, case: BadInput, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    out = work / "out"
    # OUT holds an earlier render, which a failed render must leave exactly as it was.
    render(resolve_values(backend), out)
    if case.values_text is not None:
        (tmp_path / "my-values.yaml").write_text(case.values_text)
    before, work_entries = snapshot(out), sorted(p.name for p in work.iterdir())

    args = [arg.format(tmp=tmp_path) for arg in case.args]
    run = run_render if backend == BACKENDS[0] else run_render_in_process
    result = run(backend, args, out, tmp_path)

    assert_one_clear_line(result, [text.format(tmp=tmp_path) for text in case.expected])
    assert snapshot(out) == before, "a failed render changed the existing OUT"
    assert sorted(p.name for p in work.iterdir()) == work_entries, "a temporary folder was left"


@pytest.mark.parametrize("backend", BACKENDS[:1])
def test_bad_input_does_not_create_out(backend: str, tmp_path: Path) -> None:
    out = tmp_path / "new" / "out"
    result = run_render(backend, ["--set", "scaler.maximum=-1"], out, tmp_path)
    assert_one_clear_line(result, ["scaler.maximum: got -1"])
    assert not (tmp_path / "new").exists()


def test_unknown_backend_lists_the_backends_with_templates(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_render("no-such-backend", [], out, tmp_path)
    assert_one_clear_line(
        result,
        [
            "--backend: got 'no-such-backend', expected one of the backends with templates: "
            + ", ".join(BACKENDS)
        ],
    )
    assert not out.exists()


def test_out_holding_other_files_is_refused_untouched(tmp_path: Path) -> None:
    out = tmp_path / "home"
    out.mkdir()
    (out / "notes.txt").write_text("keep me\n")
    result = run_render(BACKENDS[0], [], out, tmp_path)
    assert_one_clear_line(
        result, [f"--out: got '{out}', expected a new or empty folder", "notes.txt"]
    )
    assert snapshot(out) == {"notes.txt": b"keep me\n"}
