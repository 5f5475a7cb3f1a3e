"""Optional extras: a missing client library is one line with the pip command, not a traceback.

>>> str(MissingExtraError("docker", "docker")).split("; ")[1]
"install it with: pip install 'dask-deploy[docker]'"
"""

from __future__ import annotations

import importlib

from ._errors import UserInputError

#: What needs an optional extra -> (the module it imports, the extra that installs it).
EXTRAS = {
    "docker": ("docker", "docker"),
    "kubernetes": ("kubernetes", "kubernetes"),
    "marathon": ("marathon", "marathon"),
    "plot": ("matplotlib", "plot"),
}
#: Root module name -> extra, to explain a ModuleNotFoundError raised anywhere.
_BY_MODULE = {module: extra for module, extra in EXTRAS.values()}


class MissingExtraError(UserInputError):
    """An optional dependency is not installed (exit 2)."""

    def __init__(self, what: str, module: str) -> None:
        extra = _BY_MODULE[module]
        who = "plotting" if extra == "plot" else f"the {what} backend"
        super().__init__(
            f"{who} needs the Python package {module!r}, which is not installed; "
            f"install it with: pip install 'dask-deploy[{extra}]'"
        )


def require_extra(what: str) -> None:
    """Raise :class:`MissingExtraError` when ``what`` (a backend, or ``plot``) cannot run here."""
    if what not in EXTRAS:
        return
    module, _ = EXTRAS[what]
    try:
        importlib.import_module(module)  # the backend imports it anyway, right after
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] != module:
            raise  # the extra is there but broken: that traceback is the useful one
        raise MissingExtraError(what, module) from None


def explain_missing(error: ModuleNotFoundError) -> MissingExtraError | None:
    """The one-line error for a ModuleNotFoundError of an optional extra, else None."""
    root = (error.name or "").partition(".")[0]
    if root not in _BY_MODULE:
        return None
    what = next(name for name, (module, _) in EXTRAS.items() if module == root)
    return MissingExtraError(what, root)
