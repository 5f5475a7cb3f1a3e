"""``dask-deploy show values``: print a backend's commented defaults (its values.yaml)."""

from __future__ import annotations

import argparse

from .lifecycle import LOCAL_VALUES_YAML
from .values import VALUES_FILE, backend_folder, templates_roots

HELP = "Show a backend's commented default values (copy the keys you change into your file)."


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``show values``."""
    actions = parser.add_subparsers(dest="what", required=True, parser_class=type(parser))
    values = actions.add_parser("values", help=HELP, description=HELP)
    values.add_argument("backend", help="e.g. slurm, or local (for dask-deploy up local)")
    values.add_argument(
        "--templates",
        default=None,
        metavar="DIR",
        help="a fork of the templates laid over the installed ones (as for render)",
    )


def run(args: argparse.Namespace) -> int:
    """Print the defaults file as it is, comments included."""
    if args.backend == "local":
        print(LOCAL_VALUES_YAML, end="")
        return 0
    folder = backend_folder(templates_roots(args.templates), args.backend)
    print((folder / VALUES_FILE).read_text(), end="")
    return 0
