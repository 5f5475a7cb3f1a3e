"""What a new user meets first: --version, forks of the templates, edited output, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dask_deploy import __version__
from dask_deploy.lifecycle import LOCAL_DEFAULTS, LOCAL_VALUES_YAML
from dask_deploy.render import render_files
from dask_deploy.values import installed_templates_root, resolve_values

TRACES = Path(__file__).resolve().parents[2] / "bench" / "traces"

#: Makes `import <name>` fail as if the package were not installed (for the missing extras).
BLOCKER = """
import sys
class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == {module!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Missing())
"""


def dask_deploy(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "dask_deploy.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def test_version() -> None:
    shown = dask_deploy("--version")
    assert shown.returncode == 0
    assert shown.stdout.strip() == f"dask-deploy {__version__}"


def test_a_fork_of_one_template_renders_with_the_rest_from_the_installation(
    tmp_path: Path,
) -> None:
    fork = tmp_path / "my-templates"
    pulled = dask_deploy("templates", "pull", "slurm", str(fork))
    assert pulled.returncode == 0, pulled.stderr
    assert f"{fork}/slurm/worker-job.sh.j2" in pulled.stdout.splitlines()
    assert (fork / "_common" / "_helpers.j2").is_file()
    assert (fork / "slurm" / "values.yaml").is_file()
    # Keep only the one file we change; everything else comes from the installation.
    for path in sorted(fork.rglob("*"), reverse=True):
        if path.is_file() and path.name != "worker-job.sh.j2":
            path.unlink()
    template = fork / "slurm" / "worker-job.sh.j2"
    template.write_text(template.read_text() + "# site policy: our fork\n")

    out = tmp_path / "out"
    rendered = dask_deploy("render", "--backend", "slurm", "--templates", str(fork),
                           "--out", str(out))  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    installed = render_files(resolve_values("slurm", root=installed_templates_root()))
    assert (out / "worker-job.sh").read_text() == installed["worker-job.sh"] + (
        "# site policy: our fork\n"
    )
    for name in ("scheduler-job.sh", "scaler-config.yaml"):
        assert (out / name).read_text() == installed[name]
    # Other backends stay available through the same fork (here from the environment).
    docker = dask_deploy("render", "--backend", "docker", "--out", str(tmp_path / "docker"),
                         env={"DASK_DEPLOY_TEMPLATES": str(fork)})  # fmt: skip
    assert docker.returncode == 0, docker.stderr
    assert (tmp_path / "docker" / "compose.yaml").is_file()


def test_templates_pull_refuses_to_overwrite_an_earlier_pull(tmp_path: Path) -> None:
    assert dask_deploy("templates", "pull", "slurm", str(tmp_path / "f")).returncode == 0
    again = dask_deploy("templates", "pull", "slurm", str(tmp_path / "f"))
    assert again.returncode == 2
    assert again.stderr.strip().startswith(
        f"dask-deploy templates: error: DIR: got '{tmp_path / 'f'}', expected a folder "
        "without slurm/ (it exists"
    )
    unknown = dask_deploy("templates", "pull", "slurn", str(tmp_path / "g"))
    assert unknown.returncode == 2
    assert "--backend: got 'slurn', expected one of the backends with templates" in (unknown.stderr)


def test_rerender_over_hand_edited_output_refuses_naming_the_files_unless_forced(
    tmp_path: Path,
) -> None:
    out = tmp_path / "deploy"
    assert dask_deploy("render", "--backend", "slurm", "--out", str(out)).returncode == 0
    (out / "worker-job.sh").write_text((out / "worker-job.sh").read_text() + "#SBATCH --qos=x\n")
    refused = dask_deploy("render", "--backend", "slurm", "--set", "scaler.maximum=3",
                          "--out", str(out))  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"dask-deploy render: error: --out: {out} holds files edited since they were "
        "rendered: worker-job.sh; rendering would lose those edits (copy them away, or pass "
        "--force to overwrite)"
    )
    assert (out / "worker-job.sh").read_text().endswith("#SBATCH --qos=x\n")
    forced = dask_deploy("render", "--backend", "slurm", "--set", "scaler.maximum=3",
                         "--out", str(out), "--force")  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    assert "#SBATCH --qos=x" not in (out / "worker-job.sh").read_text()
    # The record is plain sha256sum format: users can check their folder by hand.
    check = subprocess.run(["sha256sum", "-c", ".dask-deploy.sha256"], cwd=out,
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_show_values_prints_the_commented_defaults() -> None:
    shown = dask_deploy("show", "values", "kubernetes")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == (installed_templates_root() / "kubernetes" / "values.yaml").read_text()
    local = dask_deploy("show", "values", "local")
    assert local.stdout == LOCAL_VALUES_YAML
    assert yaml.safe_load(local.stdout) == LOCAL_DEFAULTS
    assert "# Most workers to run at once." in local.stdout


def test_a_bad_log_level_is_one_clear_line() -> None:
    bad = dask_deploy("scale", "--log-level", "foo", "--scheduler", "tcp://127.0.0.1:1",
                      "--backend", "local")  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.splitlines()[-1] == (
        "dask-deploy scale: error: argument --log-level: invalid choice: 'FOO' "
        "(choose from 'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL')"
    )
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    ("module", "extra", "argv"),
    [
        ("docker", "docker", ["scale", "--dry-run", "--scheduler", "tcp://127.0.0.1:1",
                              "--backend", "docker"]),
        ("kubernetes", "kubernetes", ["up", "kubernetes"]),
        ("marathon", "marathon", ["scale", "--scheduler", "tcp://127.0.0.1:1",
                                  "--backend", "marathon"]),
    ],
)  # fmt: skip
def test_a_missing_extra_exits_2_with_the_pip_line(
    module: str, extra: str, argv: list[str], tmp_path: Path
) -> None:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER.format(module=module))
    result = dask_deploy(*argv, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"dask-deploy {argv[0]}: error: the {module} backend needs the Python package "
        f"{module!r}, which is not installed; install it with: pip install "
        f"'dask-deploy[{extra}]'"
    )


def test_simulate_json_is_strict_json() -> None:
    result = dask_deploy("simulate", "--trace", str(TRACES / "tiny.json"), "--json",
                         "--policy", "fixed", "--minimum", "1", "--maximum", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    parsed = json.loads(result.stdout, parse_constant=refuse)
    # Nothing scaled up, so there is no time to a scale-up: null, not NaN.
    assert parsed["metrics"]["time_to_scale_up_decision"] is None


def test_scale_dry_run_checks_the_real_backends_options(tmp_path: Path) -> None:
    config = tmp_path / "scaler.yaml"
    config.write_text(
        "scheduler: {address: 'tcp://127.0.0.1:1'}\nbackend: {name: local, options: {threads: 0}}\n"
    )
    result = dask_deploy("scale", "--config", str(config), "--dry-run")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "dask-deploy scale: error: backend.options.threads: got 0, expected an integer >= 1"
    )
