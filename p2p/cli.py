"""The `p2p` command line (Typer).

Every command runs through `_guard`: a `P2PError` (or a bad-input OSError) becomes one line
``error: <where>: <problem>`` on stderr and exit code 1; ``--debug`` shows the traceback.
Commands import their stage modules lazily so `p2p --help` stays fast.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from p2p import __version__
from p2p.errors import P2PError

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
def main(
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


def guard(fn: Callable[[], T]) -> T:
    """Run a command body, turning user-facing failures into one line and exit code 1."""
    try:
        return fn()
    except P2PError as exc:
        if _state["debug"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        if _state["debug"]:
            raise
        where = exc.filename or "input"
        typer.echo(f"error: {where}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None


def print_json(record: dict[str, Any]) -> None:
    """Print the machine-readable record as the last line of stdout."""
    sys.stdout.write(json.dumps(record, default=str) + "\n")
