"""``dask-deploy templates pull``: copy a backend's templates into a folder of yours, to fork.

Like ``helm pull --untar``: DIR gets ``<backend>/`` (the templates, values.yaml, its schema
and README) and ``_common/`` (the macros they import). Render with ``--templates DIR`` (or
``DASK_DEPLOY_TEMPLATES=DIR``): the fork is laid over the installed templates, so you may
delete every file you do not change and keep only the ones you fork.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ._errors import SettingsError
from .values import COMMON_FOLDER, backend_folder, installed_templates_root

HELP = "Copy a backend's templates into a folder, to fork them (render with --templates DIR)."


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``templates pull``."""
    actions = parser.add_subparsers(dest="action", required=True, parser_class=type(parser))
    pull = actions.add_parser("pull", help=HELP, description=HELP)
    pull.add_argument("backend", help="whose templates to copy, e.g. slurm")
    pull.add_argument("dir", type=Path, help="the folder to copy them into (created if needed)")


def pull(backend: str, target: Path) -> list[Path]:
    """Copy ``backend``'s installed templates and the shared macros under ``target``."""
    installed = installed_templates_root()
    source = backend_folder(installed, backend)
    copies = {source: target / backend, installed / COMMON_FOLDER: target / COMMON_FOLDER}
    for destination in copies.values():
        if destination.exists():
            raise SettingsError(
                "DIR",
                str(target),
                f"a folder without {destination.name}/ (it exists: pull into another folder, "
                "or move it away first)",
            )
    written = []
    for origin, destination in copies.items():
        shutil.copytree(origin, destination)
        written += sorted(p for p in destination.rglob("*") if p.is_file())
    return written


def run(args: argparse.Namespace) -> int:
    """Copy, list, say how to use the fork."""
    for path in pull(args.backend, args.dir):
        print(path)
    print(
        f"# render your fork with: dask-deploy render --backend {args.backend} "
        f"--templates {args.dir} (files you delete from it come from the installation)"
    )
    return 0
