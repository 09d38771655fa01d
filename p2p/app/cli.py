"""The `p2p` command line (Typer).

Every command runs through `guard`: a `P2PError` (or an OSError a user can fix: a missing
path, a full or read-only disk) becomes one line
``error: <where>: <problem>`` on stderr and exit code 1; ``--debug`` shows the traceback.
Options Click itself refuses (a word for a number, a missing option) become one such line too,
with Click's exit code 2 (`main`, the console script). Progress bars are drawn only on a
terminal, so a log or a pipe holds the one line and nothing else.
Commands import their stage modules lazily so `p2p --help` stays fast.
"""

from __future__ import annotations

import errno
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from typer._click import exceptions as click_errors  # Typer 0.29 vendors Click here

from p2p import __version__
from p2p.core.errors import P2PError

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
    from p2p.core import storage
    from p2p.core.errors import InputError

    if storage.is_remote(path):
        storage.check_writable(path)
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
    sys.stdout.write(json.dumps(record, default=str) + "\n")


# --- run / demo: the Prefect flows --------------------------------------------------------
# These two commands are the CLI's only way up into `flows/`; they import it inside the
# command (never at module level), so the library and `p2p --help` never load Prefect.
# tests/test_layering.py holds that line.


def _print_stages(record: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("stage", "cached", "seconds", "folder", title=f"workspace {record['workspace']}")
    for name, stage in record["stages"].items():
        table.add_row(
            name, "yes" if stage["cached"] else "no", f"{stage['seconds']:.1f}", stage["path"]
        )
    Console().print(table)


def check_scenes(config: Any) -> Any:
    """Check paths and every scene (files, bands, grids, overlap, chip size) before the flow
    starts, so bad input costs a second and one line, not a Prefect start-up and task
    retries of an error no retry can fix. Returns the checked config."""
    from p2p.core.config import ExportTilesConfig
    from p2p.core.roots import checked_pipeline_config
    from p2p.data.arcgis import plan_export
    from p2p.data.tiling import plan_scene

    checked = checked_pipeline_config(config)
    for scene in checked.scenes:
        if isinstance(scene, ExportTilesConfig):
            plan_export(scene.export_tiles, checked.tiling)
        else:
            plan_scene(scene, checked.tiling)
    return checked


def _print_plan(entries: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("stage", "status", "key", "why")
    for e in entries:
        table.add_row(e.label, e.status, e.record.key, e.why)
    Console().print(table)


def _plan_json(entries: Any) -> dict[str, Any]:
    return {
        "stages": {
            e.label: {"key": e.record.key, "path": e.record.path, "status": e.status, "why": e.why}
            for e in entries
        }
    }


def _training_plan(config: str, overrides: list[str], until: str | None) -> tuple[Any, Any]:
    """The checked config and its plan; nothing runs, Prefect is not imported."""
    from p2p.core.configfile import load_config
    from p2p.core.errors import ConfigError
    from p2p.core.roots import checked_pipeline_config
    from p2p.stages.pipeline import TRAINING, UNTIL
    from p2p.stages.plan import plan

    if until is not None and until not in UNTIL:
        raise ConfigError("--until", f"must be one of {', '.join(UNTIL)}, not {until!r}")
    cfg = checked_pipeline_config(load_config(config, overrides))
    return cfg, plan(TRAINING, cfg, cfg.workspace, until)


@app.command("plan")
def plan_command(
    config: str = typer.Argument(..., help="Pipeline config YAML."),
    until: str | None = typer.Option(None, "--until", help="Plan up to this stage."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config field."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Show, for each stage, whether it is cached or will run and why; runs nothing."""

    def body() -> None:
        _, entries = _training_plan(config, overrides, until)
        if as_json:
            print_json(_plan_json(entries))
        else:
            _print_plan(entries)

    guard(body)


@app.command()
def run(
    config: str = typer.Argument(..., help="Pipeline config YAML."),
    until: str | None = typer.Option(
        None, "--until", help="Stop after this stage: tile, dataset, train or evaluate."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a config field, e.g. --set train.epochs=5 (repeatable)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only show the plan (`p2p plan`)."),
    force: list[str] = typer.Option(
        [], "--force", help="Rebuild this stage and what depends on it (repeatable)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the run record as JSON."),
) -> None:
    """Run the training pipeline flow (tile → dataset → train → evaluate), cached per stage.

    When every stage is already cached, the record is printed without starting Prefect.
    """

    def body() -> None:
        from p2p.core.errors import ConfigError
        from p2p.stages.pipeline import TRAINING, run_record
        from p2p.stages.plan import force as force_stage
        from p2p.stages.plan import plan, records_of

        cfg, entries = _training_plan(config, overrides, until)
        if dry_run:
            if as_json:
                print_json(_plan_json(entries))
            else:
                _print_plan(entries)
            return
        names = [step.stage.name for step in TRAINING]
        for stage in force:
            if stage not in names:
                raise ConfigError("--force", f"must be one of {', '.join(names)}, not {stage!r}")
            force_stage(entries, stage)
        if force:
            entries = plan(TRAINING, cfg, cfg.workspace, until)
        if all(e.status == "cached" for e in entries):
            record = run_record(cfg.workspace, records_of(entries))
        else:
            record = _run_flow(check_scenes(cfg), until)
        if as_json:
            print_json(record)
        else:
            _print_stages(record)

    guard(body)


def _run_flow(cfg: Any, until: str | None) -> dict[str, Any]:
    from p2p.app.console import console_progress_bars, quiet_prefect

    quiet_prefect(_state["debug"])
    from flows.train_pipeline import train_pipeline

    with console_progress_bars():
        return train_pipeline(cfg, until)  # type: ignore[arg-type]


@app.command("train-node")
def train_node(
    config: str = typer.Argument(..., help="Pipeline config YAML (the same as `p2p run`'s)."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a config field, e.g. --set train.nodes=2 (repeatable)."
    ),
    wait: float = typer.Option(3600.0, "--wait", help="Seconds to wait for the train stage."),
) -> None:
    """Join, from another machine, the multi-node train stage that `p2p run` launches."""

    def body() -> None:
        from p2p.core.configfile import load_config
        from p2p.core.roots import checked_pipeline_config
        from p2p.stages.train_node import join_training

        folder = join_training(checked_pipeline_config(load_config(config, overrides)), wait)
        typer.echo(f"trained in {folder}")

    guard(body)


@app.command()
def demo(
    workspace: str = typer.Option("demo-work", "--workspace", help="Folder for data and runs."),
    as_json: bool = typer.Option(False, "--json", help="Print the run record as JSON."),
) -> None:
    """Generate sample scenes, train, predict two held-out scenes, mosaic and report (CPU)."""

    def body() -> None:
        from p2p.app.console import console_progress_bars, quiet_prefect

        quiet_prefect(_state["debug"])
        from flows.demo import demo_flow

        with console_progress_bars():
            record = demo_flow(workspace)
        if as_json:
            print_json(record)
        else:
            _print_stages(record)
            typer.echo(f"report: {record['report']}")

    guard(body)


# the predict, export and evaluate commands register themselves on `app`
from p2p.app import scene_commands  # noqa: E402, F401
