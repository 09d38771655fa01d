"""Stage `evaluate`: the bundle on the validation chips → ``{workspace}/evaluate/{key}/``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2p.core.cache import KeyParts, StageRecord, finished_stage, read_manifest, run_stage
from p2p.core.config import EvaluateConfig, PredictConfig, SceneConfig
from p2p.core.fsutil import atomic_write_json
from p2p.stages.stage import Stage, StageReport

if TYPE_CHECKING:
    from p2p.infer.validation import ValidationScene

NAME = "evaluate"
#: 2: baselines and skill beside the metrics, validation.png; 3: ``seamless``; 4: its
#: ``seams`` and ``spectral`` (and ``evaluate.indices`` in the key)
VERSION = 4
#: The picture: source | prediction | target | error of the first validation chips.
PICTURE = "validation.png"
PICTURE_CHIPS = 4


def key_parts(
    train: StageRecord | str | Path,
    dataset: StageRecord | str | Path,
    predict: PredictConfig,
    evaluate: EvaluateConfig | None = None,
) -> KeyParts:
    """The split, every prediction setting the seamless pixels read (window, blend, TTA,
    batch, device, nodata), the indices scored, and the train and dataset stages' keys.

    Left out: ``runtime`` (evaluate always runs torch: a fresh bundle has no ONNX export) and
    ``output_format`` (evaluate writes no raster). tests/test_stage_keys.py checks that every
    other setting a stage reads is in its key.
    """
    unread = {"runtime", "output_format"}
    config = {
        "split": "val",
        "predict": predict.model_dump(mode="json", exclude=unread),
        "evaluate": (evaluate or EvaluateConfig()).model_dump(mode="json"),
    }
    return KeyParts(NAME, VERSION, config, [finished_stage(train).key, finished_stage(dataset).key])


def run(
    workspace: str | Path,
    train: StageRecord | str | Path,
    dataset: StageRecord | str | Path,
    predict: PredictConfig,
    evaluate: EvaluateConfig | None = None,
) -> StageRecord:
    """Evaluate the model bundle on the validation chips, and on the validation blocks of the
    training scenes as `p2p predict` would translate them.

    The bundle (the artifact users ship) is loaded from the train folder and run over every
    validation chip; the folder gets ``metrics.json``: per-band and overall MAE, RMSE (target
    units), PSNR (dB) and SSIM, over valid pixels only, with the baselines' MAE on the same
    pixels and the skill ratio (model / linear), and ``validation.png``. Its ``seamless`` entry
    holds the same metrics over the validation chips' footprints predicted by the windowed,
    blended engine with `predict`'s window settings (`p2p.infer.validation`; None when no
    tiled scene has validation chips), with the seam score, the spectral angle and
    `evaluate`'s indices. The torch runtime is used: a fresh bundle has no ONNX.
    """
    tr, ds = finished_stage(train), finished_stage(dataset)
    parts = key_parts(tr, ds, predict, evaluate)
    indices = (evaluate or EvaluateConfig()).indices

    def build(folder: Path) -> dict[str, Any]:
        import torch

        from p2p.bands.baselines import with_baselines
        from p2p.data.dataset import ChipDataset
        from p2p.infer.evaluation import evaluate_chips
        from p2p.infer.validation import score_validation_blocks
        from p2p.model.bundle import load_bundle
        from p2p.model.preview import comparison_rows, write_preview

        bundle = load_bundle(tr.summary["model"])
        val_set = ChipDataset(ds.path, "val")
        metrics = with_baselines(
            evaluate_chips(bundle, val_set, predict.batch_size, predict.device),
            ds.summary.get("baselines", {}),
        )
        torch_predict = predict.model_copy(update={"runtime": "torch"})
        scenes = _validation_scenes(ds.path)
        metrics["seamless"] = score_validation_blocks(bundle, scenes, torch_predict, indices)
        atomic_write_json(folder / "metrics.json", metrics)
        samples = [val_set[i] for i in range(min(PICTURE_CHIPS, len(val_set)))]
        if samples:
            with torch.no_grad():
                generated = bundle.generator(torch.stack([x for x, _, _ in samples]))
            write_preview(folder / PICTURE, comparison_rows(samples, generated))
        return {
            "metrics": metrics,
            "n_chips": len(val_set),
            "bands": val_set.target_bands,
            "picture": str(folder / PICTURE) if samples else None,
        }

    return run_stage(workspace, parts, build)


def _validation_scenes(dataset_dir: str | Path) -> list[ValidationScene]:
    """The tiled scenes of a dataset that hold validation chips (Export Tiles folders have no
    scene raster to predict and are left out)."""
    from p2p.data import chipstore
    from p2p.data.dataset import ChipDataset
    from p2p.infer.validation import ValidationScene

    val = ChipDataset(dataset_dir, "val")
    scenes = []
    for tile in sorted({int(t) for t in val.items[:, 0]}):
        folder = val.tile_dirs[tile]
        manifest = read_manifest(folder)
        if manifest is None or manifest["stage"] != "tile":
            continue
        slots = val.items[val.items[:, 0] == tile, 1]
        index = chipstore.read_index(folder)
        chips = index[index["chip"].isin(slots)]
        boxes = tuple(zip(chips["y0"].astype(int), chips["x0"].astype(int), strict=True))
        config = manifest["config"]
        scenes.append(
            ValidationScene(
                SceneConfig.model_validate(config["scene"]),
                str(config["tiling"]["resampling"]),
                boxes,
                val.chip_size,
            )
        )
    return scenes


def report(record: StageRecord, arguments: Mapping[str, Any]) -> StageReport:
    """The evaluation report: skill against the baselines, metrics, a validation picture."""
    from p2p.infer.report import evaluate_report

    model = arguments["train"].summary["model"]
    text = evaluate_report(record.summary, model)
    return StageReport("p2p-evaluate-report", "Evaluation report", text)


STAGE = Stage(NAME, VERSION, key_parts, run, task="evaluate-model", gpu=True, report=report)
