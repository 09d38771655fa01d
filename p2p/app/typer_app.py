"""The one Typer `app` of the `p2p` command line, and what every command shares.

Every command runs through `guard`: a `P2PError` (or an OSError a user can fix: a missing
path, a full or read-only disk) becomes one line
``error: <where>: <problem>`` on stderr and exit code 1; ``--debug`` shows the traceback.
Options Click itself refuses (a word for a number, a missing option) become one such line too,
with Click's exit code 2 (`main`, the console script). Progress bars are drawn only on a
terminal, so a log or a pipe holds the one line and nothing else.
The commands live in `run_commands` (the flows) and `scene_commands` (one-off work on scenes);
`p2p.app.cli` gathers them. Commands import their stage modules lazily so `p2p --help` stays
fast.
"""

from __future__ import annotations

import errno
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from typer._click import exceptions as click_errors  # Typer 0.29 vendors Click here
from typer.core import TyperArgument, TyperOption

from p2p import __version__
from p2p.core.errors import P2PError
from p2p.core.fsutil import json_text

#: What a user types, by the Python type Typer 0.29 prints (``<bool>``, ``<list[str]>``).
_TYPE_WORDS = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "Path": "PATH"}


def _user_type(self: Any, ctx: Any) -> str | None:
    """The value column of `--help`: nothing for a flag, ``TEXT`` rather than ``<str>``,
    ``TEXT ...`` for a repeatable option, the choices of a choice; a metavar wins."""
    if getattr(self, "is_flag", False):
        return None
    if self.metavar is not None:
        return str(self.metavar)
    label = str(self.display_type(ctx))[1:-1]
    repeat = label.startswith("list[")
    label = label.removeprefix("list[").removesuffix("]") if repeat else label
    word = _TYPE_WORDS.get(label, label if "|" in label else label.upper())
    return f"{word} ..." if repeat else word


# Typer renders the value column through this hook of its parameter classes.
TyperOption.display_type_rich = _user_type  # type: ignore[method-assign]
TyperArgument.display_type_rich = _user_type  # type: ignore[method-assign]

app = typer.Typer(
    name="p2p",
    help="Pix2Pix image-to-image translation for large geospatial rasters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")
_state: dict[str, bool] = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"p2p {__version__}")
        raise typer.Exit()


@app.callback()
def options(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """p2p: train Pix2Pix on paired rasters and translate whole regions."""
    _state["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not debug:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_drop_gdal_errors)
    from p2p.core.threads import use_threads

    use_threads()  # the cores this process may use; a command's --threads overrides it


THREADS_HELP = (
    "Threads to compute with (torch, GDAL, OpenMP); default: the cores this process may use "
    "(CPU affinity, cgroup quota) shared among what runs at once."
)


def _drop_gdal_errors(record: logging.LogRecord) -> bool:
    """GDAL's own error reports (rasterio logs them) precede the exception p2p turns into the
    one error line; without --debug they would be a second, lower-level line."""
    return not (record.name.startswith("rasterio") and record.levelno >= logging.ERROR)


# OS errors a user can fix (a wrong path, a full or read-only disk), with what to do; any
# other OSError is a bug and keeps its traceback.
_OS_HINTS: dict[int, str] = {
    errno.ENOENT: "",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.EISDIR: "this is a folder; give a file",
    errno.EEXIST: "something is in the way; remove it or choose another path",
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "write to another folder",
    errno.ENOSPC: "free some space or write to another disk, then rerun to resume",
    errno.EDQUOT: "the disk quota is used up; free some space, then rerun to resume",
    errno.EFBIG: "the file is too large for this file system",
    errno.ENAMETOOLONG: "",
}


def guard(fn: Callable[[], T]) -> T:
    """Run a command body, turning user-facing failures into one line and exit code 1."""
    try:
        return fn()
    except P2PError as exc:
        if _state["debug"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        if _state["debug"] or exc.errno not in _OS_HINTS:
            raise
        where = exc.filename2 or exc.filename or "output"  # a rename: name its destination
        hint = _OS_HINTS[exc.errno]
        typer.echo(f"error: {where}: {exc.strerror}{'; ' + hint if hint else ''}", err=True)
        raise typer.Exit(1) from None


def debugging() -> bool:
    """Whether `--debug` was given (tracebacks, debug logs, Prefect's console)."""
    return _state["debug"]


def main() -> None:
    """The `p2p` console script: the Typer app, with Click's usage errors on one line."""
    try:
        code = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        exc.show()  # `p2p` alone asks for the help text; not an error
        sys.exit(exc.exit_code)
    except click_errors.ClickException as exc:
        typer.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def check_output_path(path: str) -> None:
    """Fail before any work when `path` cannot become an output file.

    Raises:
        InputError: `path` is a folder, or a file stands where one of its folders must be.
        OutputError: an ``s3://`` output's bucket is missing or not reachable.
    """
    from p2p.core import storage, transfer
    from p2p.core.errors import InputError

    if storage.is_remote(path):
        transfer.check_writable(path)
        return

    target = Path(path).absolute()
    if target.is_dir():
        raise InputError(path, "is a folder; give the output file's name")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(parent, "is a file, not a folder; choose another output path")


def print_json(record: dict[str, Any]) -> None:
    """Print the machine-readable record as the last line of stdout."""
    sys.stdout.write(json_text(record, indent=None))  # strict JSON: null for NaN
