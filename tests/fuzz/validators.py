"""Per-backend checks of one rendered output, the same tools the render tests use.

The render tests (tests/render/test_<backend>_output.py) validate inline in each test, so
these functions call the same validators: kubernetes-validate (strict, KUBERNETES_VERSION),
Marathon's App JSON Schema, ``bash -n`` for job scripts, docker-compose's own schema via the
compose file's parse plus the scaler's loaders; and on every backend the scaler accepts the
rendered scaler configuration. shellcheck and ``docker-compose config`` take ~0.2-0.5 s per
call, so they run on a sample in their own, smaller properties (see test_render_fuzz.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import referencing
import yaml

from dask_deploy.config import parse_config
from dask_deploy.testing.kubernetes import KUBERNETES_VERSION
from dask_deploy.testing.marathon import find_schemas

REPO = Path(__file__).resolve().parents[2]
MARATHON_SCHEMAS = find_schemas()

Files = Mapping[str, str]


def _load_yaml(text: str) -> Any:
    """YAML through libyaml: the validators parse every rendered file of a thousand cases."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _scaler_config(text: str, backend: str) -> None:
    config = parse_config(_load_yaml(text))
    assert config.backend.name == backend, f"scaler config names backend {config.backend.name}"


@cache
def _kubernetes_validator(kind: str, api_version: str) -> jsonschema.Draft202012Validator:
    """kubernetes-validate's own strict schema for a kind, built once (it reloads per call).

    Same files and registry as ``kubernetes_validate.validate(doc, KUBERNETES_VERSION,
    strict=True)``, which the render tests call; loading its 5 MB definitions per object
    would make a thousand cases take minutes.
    """
    version = KUBERNETES_VERSION.rsplit(".", 1)[0]
    folder = f"kubernetes-json-schema/v{version}.0-local-strict"
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = kubernetes_validate.utils.schema_contents(
        f"{folder}/{kind.lower()}-{group_version}.json", KUBERNETES_VERSION
    )
    definitions = kubernetes_validate.utils.schema_contents(
        f"{folder}/_definitions.json", KUBERNETES_VERSION
    )
    registry: referencing.Registry[Any] = referencing.Registry()
    registry = referencing.Resource.from_contents(schema) @ registry
    registry = referencing.Resource.from_contents(definitions) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate_kubernetes_object(name: str, document: Mapping[str, Any]) -> None:
    """Raise naming the file and path when ``document`` is not a valid Kubernetes object."""
    validator = _kubernetes_validator(document["kind"], document["apiVersion"])
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        path = ".".join(map(str, error.absolute_path))
        raise AssertionError(f"{name}: {path}: {error.message}")


def check_kubernetes(files: Files) -> None:
    """Every object validates against Kubernetes; the embedded worker pod and config too."""
    documents = {n: _load_yaml(t) for n, t in files.items() if n != "kustomization.yaml"}
    worker_pod = _load_yaml(documents["worker-configmap.yaml"]["data"]["worker-pod.yaml"])
    documents["worker-pod.yaml"] = worker_pod
    for name, document in documents.items():
        validate_kubernetes_object(name, document)
    listed = _load_yaml(files["kustomization.yaml"])["resources"]
    assert sorted(listed) == sorted(n for n in files if n != "kustomization.yaml")
    data = documents["scaler-configmap.yaml"]["data"]
    _scaler_config(data["scaler-config.yaml"], "kubernetes")


@cache
def _marathon_app_validator() -> jsonschema.Draft7Validator | None:
    schema = MARATHON_SCHEMAS / "App.schema.json"
    if not schema.is_file():
        return None  # test_render_fuzz skips the Marathon schema part with a message
    return jsonschema.Draft7Validator(json.loads(schema.read_text()))


def check_marathon(files: Files) -> None:
    """Each app validates against Marathon's App schema; the scaler config loads."""
    validator = _marathon_app_validator()
    for name, text in files.items():
        if not name.endswith("-app.json"):
            continue
        app = json.loads(text)
        if validator is not None:
            errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(app)]
            assert not errors, f"{name}: {errors}"
        assert not ("cmd" in app and "args" in app), f"{name} has both cmd and args"
    _scaler_config(files["scaler-config.yaml"], "marathon")


def check_slurm(files: Files) -> None:
    """Both job scripts pass ``bash -n``; the scaler config loads."""
    assert sorted(n for n in files if n.endswith(".sh")) == ["scheduler-job.sh", "worker-job.sh"]
    for name in ("scheduler-job.sh", "worker-job.sh"):
        syntax = subprocess.run(
            ["bash", "-n"], input=files[name], capture_output=True, text=True, check=False
        )
        assert syntax.returncode == 0, f"{name}: {syntax.stderr}"
    _scaler_config(files["scaler-config.yaml"], "slurm")


def batch_check(backend: str) -> Callable[[Files], None]:
    """Every job script passes ``bash -n``; the scaler config loads (SGE, PBS, LSF)."""

    def check(files: Files) -> None:
        assert {"scheduler-job.sh", "worker-job.sh"} <= set(files)
        _bash_n(files)
        _scaler_config(files["scaler-config.yaml"], backend)

    return check


def check_htcondor(files: Files) -> None:
    """The shell scripts pass ``bash -n``; the submit description names its executable and
    queues one job; the scaler config loads."""
    _bash_n(files)
    submit = files["worker.sub"]
    assert re.search(r"^executable\s*=", submit, re.M), submit
    assert re.search(r"^queue 1$", submit, re.M), submit
    _scaler_config(files["scaler-config.yaml"], "htcondor")


def check_docker(files: Files) -> None:
    """compose.yaml parses with the two host-network services; embedded config = file."""
    compose: dict[str, Any] = _load_yaml(files["compose.yaml"])
    services = compose["services"]
    assert sorted(services) == ["scaler", "scheduler"]
    assert {s["network_mode"] for s in services.values()} == {"host"}
    embedded = services["scaler"]["environment"]["DASK_DEPLOY_SCALER_CONFIG"]
    assert embedded == files["scaler-config.yaml"]
    _scaler_config(embedded, "docker")


def _bash_n(files: Files) -> None:
    for name in sorted(n for n in files if n.endswith(".sh")):
        syntax = subprocess.run(
            ["bash", "-n"], input=files[name], capture_output=True, text=True, check=False
        )
        assert syntax.returncode == 0, f"{name}: {syntax.stderr}"


def _backend_accepts(text: str, backend: str) -> None:
    """The scaler config loads and the backend itself accepts its options."""
    from dask_deploy.backends import BackendContext
    from dask_deploy.backends.command import load_settings as command_settings
    from dask_deploy.backends.ssh import load_settings as ssh_settings

    config = parse_config(_load_yaml(text))
    assert config.backend.name == backend, f"scaler config names backend {config.backend.name}"
    address = config.scheduler.address or "tcp://127.0.0.1:8786"
    context = BackendContext(config.deployment, address, config.backend.options)
    {"ssh": ssh_settings, "command": command_settings}[backend](context)


def check_ssh(files: Files) -> None:
    """scheduler-start.sh passes ``bash -n``; the config loads and the ssh backend takes it."""
    assert sorted(files) == ["scaler-config.yaml", "scheduler-start.sh"]
    _bash_n(files)
    _backend_accepts(files["scaler-config.yaml"], "ssh")


def check_command(files: Files) -> None:
    """Every script passes ``bash -n``; the config loads and the command backend takes it."""
    assert sorted(n for n in files if n.endswith(".sh")) == [
        "docker-workers.sh",
        "local-workers.sh",
        "scheduler-start.sh",
    ]
    _bash_n(files)
    _backend_accepts(files["scaler-config.yaml"], "command")


def shellcheck(files: Files, shellcheck_path: Path) -> None:
    """shellcheck on every rendered shell script (slow: used on a sample)."""
    with tempfile.TemporaryDirectory() as folder:
        for name in sorted(n for n in files if n.endswith(".sh")):
            script = Path(folder) / name
            script.write_text(files[name])
            lint = subprocess.run(
                [str(shellcheck_path), str(script)], capture_output=True, text=True, check=False
            )
            assert lint.returncode == 0, f"{name}:\n{lint.stdout}{lint.stderr}"


CHECKS: dict[str, Callable[[Files], None]] = {
    "command": check_command,
    "docker": check_docker,
    "htcondor": check_htcondor,
    "kubernetes": check_kubernetes,
    "lsf": batch_check("lsf"),
    "marathon": check_marathon,
    "pbs": batch_check("pbs"),
    "sge": batch_check("sge"),
    "slurm": check_slurm,
    "ssh": check_ssh,
}
