"""Render a backend's templates into plain files, all of them or none.

Every ``templates/<backend>/**/*.j2`` whose name (and folders) do not start with ``_`` is
rendered to the same relative path without ``.j2``; ``_`` files hold macros. The context is
``values`` (merged and validated), ``backend`` and ``version``. Output goes to a temporary
folder beside OUT and is renamed over OUT only once every file rendered, so a failure leaves
no partial folder and an existing OUT untouched.

>>> trunc63("a" * 62 + "-b")
'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shlex
import shutil
import tempfile
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import jinja2
import yaml

from ._errors import SettingsError, UserInputError
from .values import ResolvedValues

TEMPLATE_SUFFIX = ".j2"
#: Longest Kubernetes object name / DNS label, and a safe limit everywhere else.
NAME_LIMIT = 63


class RenderError(UserInputError):
    """A template failed to render (exit 2): names the template file and line."""


# --------------------------------------------------------------------------- filters


def trunc63(name: object) -> str:
    """Cut a name to 63 characters without leaving a trailing ``-`` (a DNS label's rule)."""
    return str(name)[:NAME_LIMIT].rstrip("-")


def to_json(value: object) -> str:
    """JSON with two-space indentation, keys in the given order."""
    return json.dumps(value, indent=2, sort_keys=False)


def to_yaml(value: object) -> str:
    """Block-style YAML, keys in the given order, without the final newline (like Helm's).

    Use it with Jinja's ``indent``: ``{{ values.worker.env | to_yaml | indent(8) }}``.
    """
    text = yaml.safe_dump(
        value, default_flow_style=False, sort_keys=False, allow_unicode=True, width=1_000_000
    )
    # A bare scalar is dumped as a document with an end marker: "x\n...\n".
    text = text.removesuffix("...\n")
    return text.rstrip("\n")


def shell_quote(value: object) -> str:
    """Quote a value for a POSIX shell; safe words stay unquoted."""
    return shlex.quote(str(value))


def _fail(message: str) -> NoReturn:
    """``{{ fail("...") }}`` in a template: stop rendering with this message."""
    raise RenderError(message)


FILTERS = {
    "shell_quote": shell_quote,
    "to_json": to_json,
    "to_yaml": to_yaml,
    "trunc63": trunc63,
}


def make_environment(root: Path | Sequence[Path]) -> jinja2.Environment:
    """The Jinja environment of the render contract, loading templates relative to ``root``.

    With several roots, a template is taken from the first root that has it (a fork laid
    over the installed templates). One environment per list of folders for the life of the
    process: it keeps the compiled templates (compiling is most of a render's cost) and, with
    Jinja's auto_reload, recompiles a file whose modification time changed.
    """
    roots = [root] if isinstance(root, Path) else list(root)
    return _environment(tuple(r.resolve() for r in roots))


@functools.lru_cache(maxsize=32)
def _environment(roots: tuple[Path, ...]) -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(str(r)) for r in roots]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    environment.filters.update(FILTERS)
    environment.globals["fail"] = _fail
    return environment


# --------------------------------------------------------------------------- rendering


def template_names(folder: Path) -> list[str]:
    """Templates to render in ``folder``, as paths relative to it, sorted."""
    names = []
    for path in folder.rglob(f"*{TEMPLATE_SUFFIX}"):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith("_") for part in relative.parts):
            names.append(relative.as_posix())
    return sorted(names)


def output_name(template_name: str) -> str:
    """``scheduler-pod.json.j2`` -> ``scheduler-pod.json``."""
    return template_name.removesuffix(TEMPLATE_SUFFIX)


def render_files(resolved: ResolvedValues, version: str | None = None) -> dict[str, str]:
    """Render every template of the backend in memory: ``{output name: text}``."""
    from . import __version__

    roots = list(resolved.roots) or [resolved.folder.parent]
    environment = make_environment(roots)
    context = {
        "values": resolved.values,
        "backend": resolved.backend,
        "version": version if version is not None else __version__,
    }
    rendered: dict[str, str] = {}
    names = sorted(
        {
            name
            for one in roots
            if (one / resolved.backend).is_dir()
            for name in template_names(one / resolved.backend)
        }
    )
    for name in names:
        template_path = f"{resolved.backend}/{name}"
        try:
            rendered[output_name(name)] = environment.get_template(template_path).render(context)
        except UserInputError:
            raise
        except jinja2.TemplateSyntaxError as error:
            where = _relative(roots, error.filename) if error.filename else template_path
            raise RenderError(
                f"templates/{where}, line {error.lineno}: template syntax error: {error.message}"
            ) from None
        except jinja2.TemplateNotFound as error:
            raise RenderError(
                f"{_template_location(error, roots, template_path)}: it imports or includes "
                f"{error.name}, which is not under {' or '.join(str(r) for r in roots)}"
            ) from None
        except jinja2.UndefinedError as error:
            raise RenderError(
                f"{_template_location(error, roots, template_path)}: {error.message} "
                "(an undefined name in the template; the templates and values.yaml disagree)"
            ) from None
        except jinja2.TemplateError as error:
            location = _template_location(error, roots, template_path)
            raise RenderError(f"{location}: {error}") from None
        except Exception as error:
            # e.g. a TypeError from `values.x + 1` on a string: still a template's line to fix.
            location = _template_location(error, roots, template_path)
            raise RenderError(f"{location}: {type(error).__name__}: {error}") from None
    if not rendered:
        raise RenderError(f"{resolved.folder} holds no template (*{TEMPLATE_SUFFIX}) to render")
    return rendered


def _relative(root: Path | Sequence[Path], filename: str) -> str:
    for one in [root] if isinstance(root, Path) else root:
        try:
            return Path(filename).resolve().relative_to(one.resolve()).as_posix()
        except ValueError:
            continue
    return filename


def template_sources(resolved: ResolvedValues) -> dict[str, Path]:
    """Each template of the backend (output name -> the file it is rendered from).

    Shows which files of a fork are used and which come from the installed templates.
    """
    roots = list(resolved.roots) or [resolved.folder.parent]
    found: dict[str, Path] = {}
    for one in roots:
        folder = one / resolved.backend
        if folder.is_dir():
            for name in template_names(folder):
                found.setdefault(output_name(name), folder / name)
    return dict(sorted(found.items()))


def _template_location(
    error: BaseException, root: Path | Sequence[Path], template_path: str
) -> str:
    """``templates/<file>, line N`` of the innermost template frame of the error."""
    location = f"templates/{template_path}"
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename.endswith(TEMPLATE_SUFFIX):
            location = f"templates/{_relative(root, frame.filename)}, line {frame.lineno}"
    return location


# --------------------------------------------------------------------------- writing


def _check_replaceable(out: Path, names: Mapping[str, str]) -> None:
    """OUT may be replaced only if it is new, empty, or holds nothing but files we render.

    This keeps ``--out .`` or ``--out ~`` from wiping a folder of other files.
    """
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise SettingsError("--out", str(out), "a folder (a new one, or one written by render)")
    expected = set(names)
    expected_dirs = {parent.as_posix() for name in names for parent in Path(name).parents}
    foreign = []
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out).as_posix()
        if path.is_dir() and not path.is_symlink() and relative in expected_dirs:
            continue
        if path.is_file() and not path.is_symlink() and relative in expected:
            continue
        foreign.append(relative)
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise SettingsError(
            "--out",
            str(out),
            f"a new or empty folder, or one holding only files this render writes; "
            f"it also holds {shown} (move them or choose another folder)",
        )


def write_atomically(out: Path, files: Mapping[str, str]) -> list[Path]:
    """Replace the folder ``out`` with exactly ``files``, or leave it as it was.

    The files are written to a temporary folder beside ``out``, which is then renamed over
    it. Scripts (text starting with ``#!``) are made executable. Returns the written paths.
    """
    _check_replaceable(out, files)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.rendering-", dir=out.parent))
    try:
        for name, text in files.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            target.chmod(0o755 if text.startswith("#!") else 0o644)
        staging.chmod(0o755)
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [out / name for name in files]


def _swap_into_place(staging: Path, out: Path) -> None:
    if not out.exists():
        os.rename(staging, out)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
    retired.rmdir()  # only the unique name is needed; rename needs it absent
    os.rename(out, retired)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(retired, out)
        raise
    shutil.rmtree(retired, ignore_errors=True)


#: Written into OUT beside the rendered files: the SHA-256 of each file as rendered, in
#: ``sha256sum`` format (``sha256sum -c .dask-deploy.sha256`` checks it by hand). A later
#: render compares OUT against it to find files edited by hand. The name has no .yaml or
#: .json ending, so ``kubectl apply -f OUT/`` and ``docker compose`` ignore it.
RECORD_FILE = ".dask-deploy.sha256"


def _sha256(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def checksums(files: Mapping[str, str]) -> str:
    """The record of ``files`` in ``sha256sum`` format, sorted by name."""
    return "".join(f"{_sha256(text)}  {name}\n" for name, text in sorted(files.items()))


def read_checksums(out: Path) -> dict[str, str] | None:
    """``{name: sha256}`` from OUT's record, or ``None`` when OUT has no record."""
    try:
        text = (out / RECORD_FILE).read_text()
    except OSError:
        return None
    recorded = {}
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        if digest and name:
            recorded[name] = digest
    return recorded


def edited_files(out: Path, files: Mapping[str, str]) -> list[str]:
    """Files in OUT that a render over it would lose: changed since they were rendered.

    With a record, a file is edited when its content no longer matches the record. Without
    one (an older render, or files put there by hand) a file that differs from what this
    render writes may hold edits, and counts as edited too.
    """
    if not out.is_dir():
        return []
    recorded = read_checksums(out)
    edited = []
    for path in sorted(p for p in out.rglob("*") if p.is_file() and not p.is_symlink()):
        name = path.relative_to(out).as_posix()
        if name == RECORD_FILE:
            continue
        current = _sha256(path.read_bytes())
        if recorded is not None and name in recorded:
            if current != recorded[name]:
                edited.append(name)
        elif name not in files or current != _sha256(files[name]):
            edited.append(name)
    return edited


@dataclass(frozen=True)
class RenderResult:
    """What a render wrote."""

    backend: str
    out: Path
    files: list[Path]


class EditedOutputError(UserInputError):
    """OUT holds files edited since they were rendered; rendering would lose the edits."""


def render(
    resolved: ResolvedValues, out: Path, *, version: str | None = None, force: bool = False
) -> RenderResult:
    """Render ``resolved`` into the folder ``out`` atomically; returns the files written.

    Refuses (naming them) to replace files edited by hand since the last render, unless
    ``force``; the files rendered are recorded in ``out/.dask-deploy.sha256``.

    >>> from dask_deploy.values import resolve_values
    >>> render(resolve_values("slurm"), Path("rendered/slurm")).files  # doctest: +SKIP
    [PosixPath('rendered/slurm/scaler-config.yaml'), ...]
    """
    files = render_files(resolved, version=version)
    _check_replaceable(out, {**files, RECORD_FILE: ""})  # foreign files first: a clearer error
    edited = [] if force else edited_files(out, files)
    if edited:
        shown = ", ".join(edited[:8]) + (" ..." if len(edited) > 8 else "")
        raise EditedOutputError(
            f"--out: {out} holds files edited since they were rendered: {shown}; "
            "rendering would lose those edits (copy them away, or pass --force to overwrite)"
        )
    written = write_atomically(out, {**files, RECORD_FILE: checksums(files)})
    return RenderResult(
        backend=resolved.backend, out=out, files=[p for p in written if p.name != RECORD_FILE]
    )


__all__ = [
    "FILTERS",
    "RECORD_FILE",
    "EditedOutputError",
    "RenderError",
    "RenderResult",
    "edited_files",
    "make_environment",
    "render",
    "render_files",
    "shell_quote",
    "template_names",
    "template_sources",
    "to_json",
    "to_yaml",
    "trunc63",
    "write_atomically",
]
