"""The ``dask-deploy`` command. Each subcommand lives in its own module.

A subcommand module exposes ``HELP: str``, ``configure(parser)`` and
``run(args) -> int``. Bad input raises :class:`UserInputError`, which is printed
as one line and exits 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import cast

from ._errors import UserInputError
from ._extras import explain_missing

DESCRIPTION = "Render, run, scale and inspect Dask deployments on a resource manager."
SUBCOMMANDS = {
    "render": "dask_deploy._cli_render",
    "scale": "dask_deploy._cli_scale",
    "simulate": "dask_deploy._cli_simulate",
    "up": "dask_deploy._cli_up",
    "status": "dask_deploy._cli_status",
    "down": "dask_deploy._cli_down",
    "templates": "dask_deploy._cli_templates",
    "show": "dask_deploy._cli_show",
}


def _import_subcommand(module_name: str) -> ModuleType | None:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            return None  # not built yet in this checkout
        raise


class _ExitTwoParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with ``only`` one subcommand configured in full.

    Each subcommand module imports what it runs (the simulator, distributed, jsonschema ...);
    importing all of them cost every call about 0.3 s, so a call that names its subcommand
    imports that one alone. The others stay as bare choices, so a misspelt one is still told
    the list; ``dask-deploy --help`` imports them all for their help lines.
    """
    from . import __version__

    parser = _ExitTwoParser(prog="dask-deploy", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"dask-deploy {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_ExitTwoParser)
    for name, module_name in SUBCOMMANDS.items():
        if only is not None and name != only:
            subparsers.add_parser(name)
            continue
        module = _import_subcommand(module_name)
        if module is None:
            continue
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    named = words[0] if words and words[0] in SUBCOMMANDS else None
    args = build_parser(only=named).parse_args(words)
    run = cast(Callable[[argparse.Namespace], int], args.run)
    try:
        return run(args)
    except UserInputError as error:
        print(f"dask-deploy {args.command}: error: {error}", file=sys.stderr)
        for note in getattr(error, "__notes__", ()):
            print(f"dask-deploy {args.command}: {note}", file=sys.stderr)
        return error.exit_code
    except ModuleNotFoundError as error:
        missing = explain_missing(error)
        if missing is None:
            raise
        print(f"dask-deploy {args.command}: error: {missing}", file=sys.stderr)
        return missing.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
