"""``dask-deploy render``: values + templates -> plain manifests in a folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from .render import render
from .values import SET_SYNTAX, resolve_values, templates_roots

HELP = "Render a backend's templates with your values into plain files you can read and apply."


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the render options to ``parser``."""
    parser.add_argument("--backend", required=True, help="template folder to render, e.g. slurm")
    parser.add_argument(
        "--values",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML file merged over the backend's values.yaml (repeatable; later files win)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        dest="sets",
        help=f"one value over the files (repeatable): {SET_SYNTAX}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder to write (replaced as a whole; default rendered/<backend>)",
    )
    parser.add_argument(
        "--templates",
        default=None,
        metavar="DIR",
        help="a fork of the templates (as `dask-deploy templates pull` writes it), laid over "
        "the installed ones: its files replace theirs, the rest still come from the "
        "installation (default: $DASK_DEPLOY_TEMPLATES)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite files in OUT that were edited by hand since they were rendered",
    )


def run(args: argparse.Namespace) -> int:
    """Validate, render, write; print each file written."""
    resolved = resolve_values(
        args.backend,
        values_files=args.values,
        sets=args.sets,
        root=templates_roots(args.templates),
    )
    out = args.out if args.out is not None else Path("rendered") / args.backend
    result = render(resolved, out, force=args.force)
    for path in result.files:
        print(path)
    return 0
