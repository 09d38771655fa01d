"""The Python API, for notebooks and scripts; `p2p` re-exports it lazily (``import p2p`` loads
none of torch, GDAL or Prefect until a function is called).

It runs the same stages, keys and artifacts as the command line, in this process and without
Prefect: a config loaded or built (`load_config`, `build_config`), its `plan`, `run` (the
training pipeline), `predict`, `evaluate`, `open_bundle`, and pictures that Jupyter shows
inline (`RunResult`, `Prediction` and `Picture` have ``_repr_png_``). See docs/python-api.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from p2p.core.config import PipelineConfig
    from p2p.model.bundle import Bundle
    from p2p.stages.plan import Planned


@dataclass(frozen=True)
class Picture:
    """A PNG image; shown inline by Jupyter.

    Attributes:
        png: The encoded image.
    """

    png: bytes

    def _repr_png_(self) -> bytes:
        return self.png

    def save(self, path: str | Path) -> Path:
        """Write the PNG to `path`."""
        Path(path).write_bytes(self.png)
        return Path(path)


@dataclass(frozen=True)
class RunResult:
    """A finished training run: its record (the same as ``p2p run --json``'s).

    Shown in Jupyter as its validation picture (source | prediction | target | error).
    """

    record: dict[str, Any]

    @property
    def model(self) -> str | None:
        """The model bundle folder (None when the run stopped before training)."""
        return self.record.get("model")

    @property
    def metrics(self) -> dict[str, Any]:
        """Validation metrics: per band, overall, the baselines and the skill ratio."""
        return dict(self.record.get("metrics") or {})

    def picture(self) -> Picture | None:
        """The evaluate stage's validation picture, else the last training preview."""
        stages = self.record.get("stages", {})
        candidates = []
        if "evaluate" in stages:
            candidates.append(Path(stages["evaluate"]["path"], "validation.png"))
        if "train" in stages:
            candidates += sorted(Path(stages["train"]["path"], "previews").glob("*.png"))[-1:]
        found = [p for p in candidates if p.is_file()]
        return Picture(found[0].read_bytes()) if found else None

    def _repr_png_(self) -> bytes | None:
        shown = self.picture()
        return None if shown is None else shown.png

    def __str__(self) -> str:
        from p2p.app.summary import summary_lines

        return "\n".join(summary_lines(self.record))


@dataclass(frozen=True)
class Prediction:
    """A finished prediction: its record (output, scenes, stages, seconds).

    Shown in Jupyter as a quicklook of the output (read from its overviews).
    """

    record: dict[str, Any]
    bands: Sequence[str | int] | None = field(default=None)

    @property
    def output(self) -> str:
        """The predicted raster (or mosaic)."""
        return str(self.record["output"])

    @property
    def uncertainty(self) -> str | None:
        """The uncertainty raster beside the output (``uncertainty=True``), else None."""
        return self.record.get("uncertainty")

    def quicklook(self, bands: Sequence[str | int] | None = None, size: int = 512) -> Picture:
        """A percentile-stretched picture of the output; bands by name or number."""
        from p2p.infer.quicklook import quicklook_png

        return Picture(quicklook_png(self.output, bands or self.bands, size))

    def _repr_png_(self) -> bytes:
        return self.quicklook().png

    def __str__(self) -> str:
        from p2p.app.summary import summary_lines

        return "\n".join(summary_lines(self.record))


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> PipelineConfig:
    """A config file, checked as `p2p run` checks it (paths resolved against its folder).

    Args:
        path: The YAML file.
        overrides: ``section.field=value`` items, as `--set` takes them.

    Raises:
        ConfigError: a missing file, bad YAML or an invalid field (one line naming it).
    """
    from p2p.core.configfile import load_config as load
    from p2p.core.roots import checked_pipeline_config

    return checked_pipeline_config(load(path, list(overrides)))


def build_config(
    data: Mapping[str, Any] | None = None, base: str | Path = ".", **sections: Any
) -> PipelineConfig:
    """A config from a mapping and/or keyword sections, like a YAML file's contents.

    Example: ``build_config(workspace="work", scenes=[{"source": "a.tif", "target":
    "b.tif"}], train={"epochs": 5})``. Relative paths are read against `base`.

    Raises:
        ConfigError: an invalid field (one line naming it, with close matches for a typo).
    """
    from p2p.core.configfile import parse_config, resolve_paths
    from p2p.core.roots import checked_pipeline_config

    folder = Path(base).absolute()
    config = parse_config({**(data or {}), **sections}, "config", folder)
    return checked_pipeline_config(resolve_paths(config, folder))


def plan(config: PipelineConfig, until: str | None = None) -> list[Planned]:
    """Each stage of `run(config)`: ``cached``, ``resume`` or ``run`` and why; runs nothing."""
    from p2p.stages.pipeline import TRAINING
    from p2p.stages.plan import plan as make_plan

    return make_plan(TRAINING, config, config.workspace, until)


def run(config: PipelineConfig, until: str | None = None, progress: bool = True) -> RunResult:
    """Run the training pipeline (tile → dataset → train → evaluate) in this process, cached
    per stage in the config's workspace exactly as `p2p run` does.

    Args:
        config: From `load_config` or `build_config`.
        until: Stop after this stage (tile, dataset, train or evaluate).
        progress: Print one plain line per tenth of each stage's work.
    """
    return RunResult(_train(config, until, progress))


def _train(config: PipelineConfig, until: str | None, progress: bool) -> dict[str, Any]:
    """The one place the API runs the training pipeline: checked, then its stages in this
    process (the runner the CLI's `predict` uses), the same record as `p2p run --json`."""
    from p2p.stages.pipeline import TRAINING, in_process, run_pipeline

    return run_pipeline(TRAINING, config, in_process(_progress(progress)), until=until)


def _progress(show: bool) -> Any:
    if not show:
        return None
    from p2p.app.console import plain_progress

    sink = plain_progress()
    return lambda label: lambda done, total: sink(label, done, total)


def predict(
    model: str | Path,
    inputs: str | Path | Sequence[str | Path],
    output: str | Path,
    *,
    bands: Sequence[int] | None = None,
    workspace: str | Path | None = None,
    progress: bool = True,
    **settings: Any,
) -> Prediction:
    """Translate one scene, or several into one mosaic, as `p2p predict` does.

    Args:
        model: A model bundle folder (`RunResult.model`).
        inputs: A raster, band files joined by commas, or a list of those (one per scene).
        output: The prediction (one input) or the mosaic.
        bands: 1-based source bands to use, in order (a config's ``source_bands``).
        workspace: Stage cache (default: ``.p2p-work`` beside the output).
        progress: Print one plain line per tenth of each scene.
        **settings: `PredictConfig` fields, e.g. ``tile_size=256, device="cpu"``.
    """
    from p2p.core.config import MosaicConfig, PredictConfig, SceneConfig
    from p2p.stages.pipeline import (
        PREDICTION,
        PredictionJob,
        default_workspace,
        in_process,
        run_pipeline,
    )

    specs = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    scenes = [SceneConfig.model_validate({"source": str(s), "source_bands": bands}) for s in specs]
    ws = str(workspace) if workspace is not None else str(default_workspace(output))
    out = str(Path(output).absolute()) if "://" not in str(output) else str(output)
    job = PredictionJob(ws, str(model), scenes, PredictConfig(**settings), MosaicConfig(), out)
    return Prediction(run_pipeline(PREDICTION, job, in_process(_progress(progress))))


def evaluate(
    prediction: str | Path,
    target: str | Path,
    *,
    model: str | Path | None = None,
    source: str | Path | None = None,
    target_bands: Sequence[int] | None = None,
    uncertainty: str | Path | None = None,
) -> dict[str, Any]:
    """Score a prediction against a reference (MAE, RMSE, PSNR, SSIM per band and overall);
    with the `model` and its `source` scene, also the mean and linear baselines; with its
    `uncertainty` raster, how well that ranks the errors (`p2p.infer.calibration`)."""
    from p2p.core.config import SceneConfig
    from p2p.infer.evaluation import evaluate as score
    from p2p.model.meta import read_meta

    meta = read_meta(model)[0] if model is not None else None
    files = SceneConfig.model_validate({"source": str(source)}).source if source else None
    return score(
        prediction,
        str(target),
        target_bands=target_bands,
        model=meta,
        source=files,
        uncertainty=uncertainty,
    )


def open_bundle(path: str | Path, device: str = "cpu") -> Bundle:
    """Load a model bundle: its metadata (`.meta`: bands, statistics, chip size, metrics)
    and its generator (`.generator`, a torch module in eval mode)."""
    from p2p.model.bundle import load_bundle

    return load_bundle(path, device)


def quicklook(
    raster: str | Path, bands: Sequence[str | int] | None = None, size: int = 512
) -> Picture:
    """A percentile-stretched picture of any raster, read from its overviews."""
    from p2p.infer.quicklook import quicklook_png

    return Picture(quicklook_png(raster, bands, size))
