"""The `p2p` commands that work on scenes with a model bundle: `predict`, `export`, `evaluate`.

They register on the one Typer `app` of `p2p.app.typer_app` and run through its `guard` (one error
line, exit code 1); heavy modules are imported inside the commands, after the arguments are
checked.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from p2p.app.typer_app import THREADS_HELP, app, check_output_path, guard, print_json


def workspace_path(path: str) -> str:
    """A workspace option: an ``s3://`` prefix as given, a folder made absolute."""
    from p2p.core import storage

    return path if storage.is_remote(path) else str(Path(path).absolute())


#: `predict` options by the PredictConfig field they set.
_OPTION_NAMES = {
    "tile_size": "--tile-size",
    "overlap": "--overlap",
    "batch_size": "--batch-size",
    "device": "--device",
    "blend": "--blend",
    "output_format": "--format",
    "compress": "--compress",
    "nodata": "--nodata",
    "uncertainty": "--uncertainty",
    "samples": "--samples",
}


def _scene_option(spec: str, bands: list[int] | None = None) -> Any:
    """The scene of one `--input` value (a raster, or band files joined by commas), with the
    1-based `bands` chosen from its stacked bands.

    Raises:
        ConfigError: the value names no file.
    """
    from pydantic import ValidationError

    from p2p.core.config import SceneConfig
    from p2p.core.errors import ConfigError
    from p2p.core.fielderrors import first_error

    try:
        return SceneConfig.model_validate({"source": spec, "source_bands": bands})
    except ValidationError as exc:
        field, msg = first_error(exc, SceneConfig)
        if field == "source_bands":
            raise ConfigError("--bands", msg) from None
        raise ConfigError("--input", f"{spec!r}: {msg}") from None


def _bands_option(text: str | None) -> list[int] | None:
    """`--bands 1,2,3` as a list of 1-based band numbers.

    Raises:
        ConfigError: an entry is not a whole number.
    """
    from p2p.core.errors import ConfigError

    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(
            "--bands", f"{text!r} is not a list of band numbers; give e.g. --bands 1,2,3"
        ) from None


def _scene_progress(label: str) -> Any:
    """A rich progress bar on stderr (stdout stays clean for --json); drawn only on a
    terminal, so an error after work started is the only line a log or pipe receives."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress(
        f"[bold]{label}[/bold] {{task.description}}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
        redirect_stdout=False,  # stdout is the log's: plain lines and the record
        disable=not sys.stderr.isatty(),
    )


def _beside(path: str, suffix: str) -> str | None:
    """A file beside a local `path` with its extension replaced by `suffix`; None for a URL."""
    from p2p.core import storage

    return None if storage.is_remote(path) else str(Path(path).with_suffix(suffix))


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
    tile_size: int | None = typer.Option(
        None, "--tile-size", help="Window side in pixels (default: the model's chip size)."
    ),
    overlap: int | None = typer.Option(
        None, "--overlap", help="Overlap on each side of a window (default: window / 8)."
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    blend: str = typer.Option("cosine", "--blend", help="cosine, linear or none."),
    output_format: str = typer.Option("cog", "--format", help="gtiff or cog."),
    compress: str | None = typer.Option(
        None, "--compress", help="deflate, zstd, lzw or none (default: predict.compress's)."
    ),
    runtime: str = typer.Option(
        "torch", "--runtime", help="torch, or onnx (the bundle's model.onnx; see p2p export)."
    ),
    bands: str | None = typer.Option(
        None,
        "--bands",
        help="1-based source bands to use, in order, e.g. 1,2,3 (like a config's source_bands).",
        metavar="N,N,...",
    ),
    quicklook: bool = typer.Option(
        False, "--quicklook", help="Also write OUTPUT.quicklook.png, read from the overviews."
    ),
    quicklook_bands: str | None = typer.Option(
        None,
        "--quicklook-bands",
        metavar="B,B,B",
        help="Bands of the quicklook by name or number: one (gray) or three (RGB); "
        "default: the first three.",
    ),
    tta: bool | None = typer.Option(
        None,
        "--tta/--no-tta",
        help="Average each window over its 8 flips and quarter turns (8x the compute; "
        "default: predict.tta's default).",
    ),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    uncertainty: bool = typer.Option(
        False,
        "--uncertainty",
        help="Also write OUTPUT.uncertainty.tif: the per-pixel spread across the 8 symmetries "
        "(float32, target units, same grid; needs tta).",
    ),
    samples: int = typer.Option(
        0,
        "--samples",
        metavar="N",
        help="With --uncertainty: the spread across N dropout-on samples of each symmetry "
        "instead (8N more forward passes; a model with dropout, num_downs >= 6).",
    ),
) -> None:
    """Translate one scene, or several scenes into one mosaic, with a model bundle.

    Runs the prediction stages of the `batch_predict` flow (same keys, same artifacts) without
    Prefect, cached in a workspace: a rerun reuses finished scenes and resumes a killed one.

    Example: p2p predict --model work/train/KEY/model --input B2.tif,B3.tif,B4.tif
    --output out.tif
    """

    def body() -> None:
        import time

        from pydantic import ValidationError

        from p2p.core.config import MosaicConfig, PredictConfig
        from p2p.core.errors import ConfigError
        from p2p.core.fielderrors import first_error
        from p2p.core.threads import use_threads

        start = time.perf_counter()
        use_threads(threads)  # logged with --debug
        try:
            config = PredictConfig.model_validate(
                {"tile_size": tile_size, "overlap": overlap, "batch_size": batch_size,
                 "device": device, "blend": blend, "output_format": output_format,
                 "nodata": nodata, "runtime": runtime, "uncertainty": uncertainty,
                 "samples": samples}
                | ({} if tta is None else {"tta": tta})
                | ({} if compress is None else {"compress": compress})
            )  # fmt: skip
        except ValidationError as exc:
            field, msg = first_error(exc, PredictConfig)
            raise ConfigError(_OPTION_NAMES.get(field, field), msg) from None
        chosen = _bands_option(bands)
        scenes = [_scene_option(spec, chosen) for spec in inputs]
        check_output_path(output)
        # the bad input above is refused before torch and GDAL are imported (a second saved)
        from p2p.app.console import log_output, plain_progress
        from p2p.app.summary import summary_lines
        from p2p.infer.inference import resolve_window
        from p2p.model.meta import read_meta
        from p2p.stages.pipeline import (
            PREDICTION,
            PredictionJob,
            default_workspace,
            in_process,
            run_pipeline,
        )

        meta = read_meta(model)[0]
        resolve_window(meta, config)
        shown = quicklook_bands.split(",") if quicklook_bands else None
        if shown:
            from p2p.infer.quicklook import pick_bands

            pick_bands(list(meta.target_bands), shown)  # a wrong band fails before any work
        ws = str(default_workspace(output) if workspace is None else workspace_path(workspace))
        job = PredictionJob(ws, model, scenes, config, MosaicConfig(), output)
        lines = plain_progress() if log_output() and not as_json else None
        with _scene_progress("predict") as bars:

            def progress(name: str) -> Callable[[int, int], None]:
                task = bars.add_task(name, total=None)

                def report(done: int, total: int) -> None:
                    bars.update(task, completed=done, total=total)
                    if lines is not None:  # a log: plain lines on stdout too
                        lines(name, done, total)

                return report

            record = run_pipeline(PREDICTION, job, in_process(progress))
        record["seconds"] = round(time.perf_counter() - start, 3)  # the command's, checks included
        if quicklook or quicklook_bands:
            from p2p.infer.quicklook import write_quicklook

            record["report"] = write_quicklook(str(record["output"]), bands=shown)
        if as_json:
            print_json(record)
        else:
            for line in summary_lines(record):
                typer.echo(line)

    guard(body)


@app.command()
def export(
    model: str = typer.Option(..., "--model", help="Model bundle folder."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON record last."),
) -> None:
    """Write the bundle's generator as model.onnx (for `p2p predict --runtime onnx`).

    Example: p2p export --model work/train/KEY/model
    """

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
    model: str | None = typer.Option(
        None, "--model", help="The model bundle: score its baselines beside it (needs --source)."
    ),
    source: str | None = typer.Option(
        None, "--source", help="The source scene predicted (a raster or comma-joined bands)."
    ),
    picture: str | None = typer.Option(
        None,
        "--picture",
        help="Where to draw (source |) prediction | target | error of the windows with the "
        "largest, median and smallest error (default: PREDICTION.evaluate.png beside it).",
    ),
    no_picture: bool = typer.Option(False, "--no-picture", help="Draw no picture."),
    index: list[str] | None = typer.Option(
        None,
        "--index",
        help="NAME=A,B: score the normalized difference (A-B)/(A+B) of two bands (names or "
        "1-based numbers), e.g. ndvi=nir,red (repeatable).",
    ),
    uncertainty: str | None = typer.Option(
        None,
        "--uncertainty",
        help="The prediction's uncertainty raster (p2p predict --uncertainty): the rank "
        "correlation between it and the absolute error, and the error of its most and least "
        "uncertain deciles.",
        metavar="U.tif",
    ),
) -> None:
    """Score a prediction against a reference raster (MAE, RMSE, PSNR, SSIM per band, the
    seam score of its window boundaries, the spectral angle for several bands).

    With --model and --source, also the constant-mean and linear baselines on the same
    pixels; --index ndvi=nir,red adds an index's MAE.

    Example: p2p evaluate --prediction out.tif --target map.tif --model MODEL --source in.tif
    """

    def body() -> None:
        from p2p.core.config import SceneConfig
        from p2p.core.errors import ConfigError
        from p2p.infer.evaluation import evaluate as run_evaluation
        from p2p.infer.report import fidelity_lines, skill_line, uncertainty_lines
        from p2p.model.meta import read_meta

        if error_map is not None:
            check_output_path(error_map)
        drawn = None if no_picture else (picture or _beside(prediction, ".evaluate.png"))
        if drawn is not None:
            check_output_path(drawn)
        if (model is None) != (source is None):
            raise ConfigError("--model/--source", "give both to score the baselines, or neither")
        meta = read_meta(model)[0] if model else None
        files = SceneConfig.model_validate({"source": source}).source if source else None
        record = run_evaluation(
            prediction, target, error_map, target_bands=target_bands or None, model=meta,
            source=files, picture=drawn, indices=index or (), uncertainty=uncertainty,
        )  # fmt: skip
        if as_json:
            print_json(record)
            return
        for band in [*record["bands"], {"name": "overall", **record["overall"]}]:
            cells = [
                f"{k}={band[k]:.4g}" for k in ("mae", "rmse", "psnr", "ssim") if band[k] is not None
            ]
            typer.echo(f"{band['name']}: " + " ".join(cells))
        if "baselines" in record:
            typer.echo(skill_line(record))
        for line in [*fidelity_lines(record), *uncertainty_lines(record)]:
            typer.echo(line)
        if record.get("picture"):  # last: the one line naming a file
            typer.echo(f"picture: {record['picture']}")

    guard(body)
