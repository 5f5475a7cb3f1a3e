"""The worker image carries dask-deploy only for its worker preload, over the worker's libraries
(images/dask-deploy/requirements/worker.txt) and none of dask-deploy's own (jinja2's templates,
jsonschema, rich, the backends' clients): importing ``dask_deploy.worker_preload`` must need
nothing else. Checked here in a Python that can import only what the worker image installs;
tests/images/test_images.py imports it in the image itself.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
WORKER_REQUIREMENTS = REPO / "images" / "dask-deploy" / "requirements" / "worker.txt"

#: Run in a fresh interpreter: every top-level module outside the standard library and the
#: worker image's packages fails to import, as it would in the image.
IMPORT_AS_THE_WORKER_IMAGE = """
import importlib.abc, json, sys
allowed = set(json.loads(sys.argv[1])) | set(sys.stdlib_module_names) | {"dask_deploy"}

class NotInTheWorkerImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in allowed and not top.startswith("_"):
            raise ModuleNotFoundError(f"No module named {name!r} (not in the worker image)")
        return None

sys.meta_path.insert(0, NotInTheWorkerImage())
import dask_deploy.worker_preload as preload
print(preload.handover_seconds())
"""


def worker_image_modules() -> set[str]:
    """Top-level modules of the worker image's packages and everything they require."""
    wanted = [
        Requirement(line.split("#")[0].strip()).name
        for line in WORKER_REQUIREMENTS.read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    seen: set[str] = set()
    while wanted:
        name = wanted.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here (pyarrow): not importable either, so not needed
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                wanted.append(requirement.name)
    return {
        module
        for module, distributions in importlib.metadata.packages_distributions().items()
        if any(d.lower().replace("_", "-") in seen for d in distributions)
    }


def test_the_worker_preload_imports_with_only_the_worker_images_packages() -> None:
    modules = worker_image_modules()
    assert {"distributed", "dask", "numpy"} <= modules
    assert not modules & {"jsonschema", "rich", "kubernetes", "docker"}, "the model is wrong"
    imported = subprocess.run(
        [sys.executable, "-c", IMPORT_AS_THE_WORKER_IMAGE, json.dumps(sorted(modules))],
        capture_output=True,
        text=True,
        env={"DASK_DEPLOY_HANDOVER_SECONDS": "7"},
        cwd=REPO,
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "7.0"


def test_the_check_catches_an_import_the_worker_image_lacks() -> None:
    imported = subprocess.run(
        [sys.executable, "-c", IMPORT_AS_THE_WORKER_IMAGE.replace("worker_preload", "values"),
         json.dumps(sorted(worker_image_modules()))],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert imported.returncode != 0
    assert "not in the worker image" in imported.stderr
