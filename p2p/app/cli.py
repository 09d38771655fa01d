"""The `p2p` command line (Typer).

Every command runs through `guard`: a `P2PError` (or an OSError a user can fix: a missing
path, a full or read-only disk) becomes one line
``error: <where>: <problem>`` on stderr and exit code 1; ``--debug`` shows the traceback.
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


def check_output_path(path: str) -> None:
    """Fail before any work when `path` cannot become an output file.

    Raises:
        InputError: `path` is a folder, or a file stands where one of its folders must be.
    """
    from p2p.core.errors import InputError

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
    from p2p.core.config import load_config
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
        from p2p.core.config import load_config
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


def _scene_progress(label: str) -> Any:
    """A rich progress bar on stderr (stdout stays clean for --json)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress(
        f"[bold]{label}[/bold] {{task.description}}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )


@app.command()
def predict(
    model: str = typer.Option(..., "--model", help="Model bundle folder."),
    inputs: list[str] = typer.Option(
        ..., "--input", help="Source scene: a raster or comma-joined band files (repeatable)."
    ),
    output: str = typer.Option(..., "--output", help="Prediction (one input) or mosaic."),
    workspace: str | None = typer.Option(
        None, "--workspace", help="Stage cache folder (default: .p2p-work beside the output)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON record last."),
    nodata: float | None = typer.Option(None, "--nodata", help="Source nodata override."),
    tile_size: int = typer.Option(512, "--tile-size", help="Window side in pixels."),
    overlap: int = typer.Option(64, "--overlap", help="Overlap on each side of a window."),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    blend: str = typer.Option("cosine", "--blend", help="cosine, linear or none."),
    output_format: str = typer.Option("cog", "--format", help="gtiff or cog."),
    runtime: str = typer.Option(
        "torch", "--runtime", help="torch, or onnx (the bundle's model.onnx; see p2p export)."
    ),
) -> None:
    """Translate one scene, or several scenes into one mosaic, with a model bundle.

    Runs the prediction stages of the `batch_predict` flow (same keys, same artifacts) without
    Prefect, cached in a workspace: a rerun reuses finished scenes and resumes a killed one.
    """

    def body() -> None:
        import time

        from pydantic import ValidationError

        from p2p.core.config import MosaicConfig, PredictConfig, SceneConfig
        from p2p.core.errors import ConfigError
        from p2p.stages.pipeline import PredictionJob, default_workspace, predict_in_process

        start = time.perf_counter()
        try:
            config = PredictConfig.model_validate(
                {"tile_size": tile_size, "overlap": overlap, "batch_size": batch_size,
                 "device": device, "blend": blend, "output_format": output_format,
                 "nodata": nodata, "runtime": runtime}
            )  # fmt: skip
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(".".join(map(str, err["loc"])) or "predict", err["msg"]) from None
        scenes = [SceneConfig.model_validate({"source": spec}) for spec in inputs]
        check_output_path(output)
        ws = str(Path(workspace).absolute() if workspace else default_workspace(output))
        job = PredictionJob(ws, model, scenes, config, MosaicConfig())
        with _scene_progress("predict") as bars:

            def progress(name: str) -> Callable[[int, int], None]:
                task = bars.add_task(name, total=None)
                return lambda done, total: bars.update(task, completed=done, total=total)

            stages = predict_in_process(job, output, progress)
        record = {
            "output": str(Path(output).absolute()),
            "scenes": len(scenes),
            "workspace": ws,
            "stages": {name: r.key for name, r in stages.items()},
            "seconds": round(time.perf_counter() - start, 3),
        }
        if as_json:
            print_json(record)
        else:
            typer.echo(f"wrote {record['output']}")

    guard(body)


@app.command()
def export(
    model: str = typer.Option(..., "--model", help="Model bundle folder."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON record last."),
) -> None:
    """Write the bundle's generator as model.onnx (for `p2p predict --runtime onnx`)."""

    def body() -> None:
        from p2p.infer.onnxbundle import export_onnx

        path = export_onnx(model)
        if as_json:
            print_json({"onnx": str(path), "bytes": path.stat().st_size})
        else:
            typer.echo(f"wrote {path}")

    guard(body)


@app.command()
def evaluate(
    prediction: str = typer.Option(..., "--prediction", help="Predicted raster."),
    target: str = typer.Option(..., "--target", help="Reference raster or comma-joined bands."),
    target_bands: list[int] | None = typer.Option(
        None, "--target-bands", help="1-based reference band (repeatable)."
    ),
    error_map: str | None = typer.Option(None, "--error-map", help="Write |error| here."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Score a prediction against a reference raster (MAE, RMSE, PSNR, SSIM per band)."""

    def body() -> None:
        from p2p.infer.evaluation import evaluate as run_evaluation

        if error_map is not None:
            check_output_path(error_map)
        record = run_evaluation(prediction, target, error_map, target_bands=target_bands or None)
        if as_json:
            print_json(record)
            return
        for band in [*record["bands"], {"name": "overall", **record["overall"]}]:
            cells = [
                f"{k}={band[k]:.4g}" for k in ("mae", "rmse", "psnr", "ssim") if band[k] is not None
            ]
            typer.echo(f"{band['name']}: " + " ".join(cells))

    guard(body)
