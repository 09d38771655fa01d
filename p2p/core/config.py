"""Typed configuration: one frozen pydantic model per stage, gathered in `PipelineConfig`.

`PipelineConfig` is the only parameter of the training flow, so the Prefect UI renders it as a
typed form; YAML files load into it with `p2p.core.configfile.load_config`, and the CLI
overrides single fields with `--set section.field=value`. Unknown keys and bad values fail
here, before any work starts.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from p2p.core.predict_config import EvaluateConfig as EvaluateConfig
from p2p.core.predict_config import MosaicConfig as MosaicConfig
from p2p.core.predict_config import PredictConfig as PredictConfig
from p2p.core.scenes import MAX_SIDE as MAX_SIDE
from p2p.core.scenes import ExportTilesConfig as ExportTilesConfig
from p2p.core.scenes import FrozenConfig
from p2p.core.scenes import SceneConfig as SceneConfig
from p2p.core.scenes import StacRef as StacRef
from p2p.core.scenes import TrainingScene as TrainingScene

# Upper bounds of counts: far above any real run, low enough that a typo (1e9) is refused
# before it allocates or launches anything.
MAX_EPOCHS = 100_000
MAX_SEED = 2**32 - 1  # numpy's seeds stop here
MAX_DEVICES = 256  # training processes on one machine


class TilingConfig(FrozenConfig):
    """How scenes are cut into paired chips (stage `tile`)."""

    chip_size: int = Field(default=256, gt=0, le=MAX_SIDE, description="Chip side in pixels.")
    stride: int = Field(
        default=256,
        gt=0,
        le=MAX_SIDE,
        description="Step between chips in pixels; < chip_size overlaps them.",
    )
    min_valid_fraction: float = Field(
        default=0.9, ge=0.0, le=1.0, description="Chips with fewer valid pixels are dropped."
    )
    block_chips: int = Field(
        default=8,
        gt=0,
        le=256,
        description="Chips per side of one Dask block (the unit of resume).",
    )
    resampling: Literal["nearest", "bilinear", "cubic", "average", "mode"] = Field(
        default="bilinear",
        description="Resampling used when the target is warped onto the source grid.",
    )
    compression: Literal["lz4", "none"] = Field(
        default="lz4",
        description="Chip store codec: byte-shuffled LZ4 (~40% smaller) or none (~15% less "
        "tiling CPU, for fast local disks). Only bytes on disk differ, not chip values.",
    )


class DatasetConfig(FrozenConfig):
    """Train/val split and band statistics (stage `dataset`)."""

    val_fraction: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="Fraction of split blocks held out for val."
    )
    split_block_chips: int = Field(
        default=8,
        gt=0,
        le=4096,
        description="Side, in chips, of the spatial blocks that go wholly to train or val.",
    )
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Seed of the block assignment.")


class ModelConfig(FrozenConfig):
    """Pix2Pix architecture (Isola et al., 2017)."""

    num_downs: int = Field(
        default=8, ge=2, le=10, description="U-Net levels; input side must be a multiple of 2^n."
    )
    ngf: int = Field(default=64, gt=0, le=1024, description="Generator filters in the first layer.")
    ndf: int = Field(
        default=64, gt=0, le=1024, description="Discriminator filters in the first layer."
    )
    n_layers_d: int = Field(
        default=3, ge=1, le=8, description="PatchGAN layers; 3 gives a 70x70 receptive field."
    )
    norm: Literal["batch", "instance"] = Field(
        default="batch",
        description="Normalization; batch keeps tiles consistent at inference (no seams).",
    )
    dropout: float = Field(
        default=0.5, ge=0.0, lt=1.0, description="Dropout in the innermost decoder blocks."
    )
    linear_anchor: bool = Field(
        default=True,
        description="Add a per-pixel linear path (1x1 conv started at the dataset's "
        "least-squares fit) to a U-Net whose last layer starts at zero, so training starts "
        "from the linear baseline and learns only what spatial context adds.",
    )


class TrainConfig(FrozenConfig):
    """Training loop settings (stage `train`)."""

    epochs: int = Field(
        default=200, ge=0, le=MAX_EPOCHS, description="Epochs at the initial learning rate."
    )
    epochs_decay: int = Field(
        default=0,
        ge=0,
        le=MAX_EPOCHS,
        description="Further epochs with the rate decaying linearly to zero.",
    )
    batch_size: int = Field(
        default=1,
        gt=0,
        le=4096,
        description="Chips per step in each process (×processes per step).",
    )
    lr: float = Field(default=2e-4, gt=0, le=1, description="Adam learning rate.")
    beta1: float = Field(default=0.5, ge=0, lt=1, description="Adam beta1.")
    lambda_l1: float = Field(default=100.0, ge=0, le=1e6, description="Weight of the L1 term.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto picks CUDA when present."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="auto: bf16 (or fp16 + scaler) on CUDA, fp32 on CPU."
    )
    seed: int = Field(
        default=0, ge=0, le=MAX_SEED, description="Seed of weights, shuffling and augmentation."
    )
    augment: bool = Field(default=True, description="Paired flips and rot90 of train chips.")
    num_workers: int = Field(default=0, ge=0, le=256, description="DataLoader worker processes.")
    compile: bool = Field(
        default=False,
        description="Run the generator's and discriminator's training steps through "
        "torch.compile (minutes of compiling first; pays on a GPU at large batches, see "
        "docs/training.md). Changes float rounding, so it is part of the train key.",
    )
    preview_chips: int = Field(
        default=4, ge=0, le=64, description="Validation chips drawn in each epoch's preview PNG."
    )
    warmup_epochs: int = Field(
        default=0,
        ge=0,
        le=MAX_EPOCHS,
        description="First epochs trained on L1 alone (no discriminator); counted in epochs.",
    )
    bn_stats: Literal["recompute", "running"] = Field(
        default="recompute",
        description="Generator BatchNorm statistics used at inference: recomputed exactly "
        "over the training chips before each validation (recompute), or the running averages "
        "of training (running).",
    )
    ema_epochs: float = Field(
        default=0.0,
        ge=0,
        le=MAX_EPOCHS,
        description="Horizon in epochs of an exponential moving average of the generator's "
        "weights, updated after every step (decay 1 - 1/(ema_epochs x steps per epoch)); the "
        "average is what is validated, kept and bundled. 0: off (the raw weights).",
    )
    keep: Literal["best", "last"] = Field(
        default="best",
        description="Generator to bundle: the epoch with the lowest validation MAE (best; "
        "the last epoch when there is no validation set) or the last epoch.",
    )
    devices: Literal["auto"] | int = Field(
        default="auto",
        description="Training processes per node (auto: one per CUDA GPU, else 1); more than "
        "one runs data-parallel under torchrun (NCCL on CUDA, gloo on CPU).",
    )
    nodes: int = Field(default=1, ge=1, le=1024, description="Machines training together.")
    rendezvous: str | None = Field(
        default=None,
        description="host:port of the torchrun c10d rendezvous, the same on every node; "
        "needed when nodes > 1.",
    )

    @field_validator("devices")
    @classmethod
    def _devices_positive(cls, value: str | int) -> str | int:
        if isinstance(value, int) and not 1 <= value <= MAX_DEVICES:
            raise ValueError(f"must be auto or a number of processes from 1 to {MAX_DEVICES}")
        return value

    @model_validator(mode="after")
    def _rendezvous_for_nodes(self) -> TrainConfig:
        if self.nodes > 1 and not self.rendezvous:
            raise ValueError("nodes > 1 needs a rendezvous endpoint (train.rendezvous: host:port)")
        return self


class DaskConfig(FrozenConfig):
    """Where Dask work runs: a LocalCluster by default, an existing scheduler by address."""

    address: str | None = Field(
        default=None, description="Scheduler address (tcp://host:8786); None starts a local one."
    )
    n_workers: int | None = Field(
        default=None, gt=0, le=1024, description="Local workers (None: auto)."
    )
    threads_per_worker: int | None = Field(
        default=None, gt=0, le=1024, description="Threads per local worker (None: auto)."
    )


#: The stall watchdog of every stage (`p2p.stages.watch`): seconds, a week at most.
WATCHDOG_S = 1800.0
MAX_WATCHDOG_S = 7 * 24 * 3600.0
WATCHDOG = (
    "Seconds a stage may go without progress (blocks, steps, strips) before it fails with one "
    "line naming the stage and how far it got, so a scheduled run never hangs; 0 turns the "
    "watchdog off. Stages that report no progress (dataset, evaluate) are not timed."
)
#: The run settings both pipeline configs share (the stall watchdog, the thread budget).
WatchdogSeconds = Annotated[
    float, Field(ge=0, le=MAX_WATCHDOG_S, allow_inf_nan=False, description=WATCHDOG)
]
Threads = Annotated[
    int | None,
    Field(
        gt=0,
        le=1024,
        description="Threads each task computes with (torch intra-op, GDAL, OpenMP); None: "
        "the cores this process may use (CPU affinity, cgroup quota) divided among the tasks "
        "that run at once (p2p.core.threads). Speed only: no key depends on it.",
    ),
]


class PipelineConfig(FrozenConfig):
    """Everything the training pipeline needs; the one parameter of `train_pipeline`."""

    workspace: str = Field(default="./work", description="Folder holding every stage's artifacts.")
    scenes: list[TrainingScene] = Field(
        default_factory=list,
        description="Training scenes: raster pairs (each needs a target) and Export Tiles "
        "folders ({export_tiles: folder}).",
    )
    tiling: TilingConfig = Field(default_factory=TilingConfig, description="Tiling settings.")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig, description="Split settings.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Architecture.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training settings.")
    predict: PredictConfig = Field(
        default_factory=PredictConfig, description="Inference settings for evaluation."
    )
    evaluate: EvaluateConfig = Field(
        default_factory=EvaluateConfig, description="What evaluation scores beyond the metrics."
    )
    dask: DaskConfig = Field(default_factory=DaskConfig, description="Dask cluster.")
    watchdog_s: WatchdogSeconds = WATCHDOG_S
    threads: Threads = None

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        chip, downs = self.tiling.chip_size, self.model.num_downs
        if chip % 2**downs:
            raise ValueError(f"tiling.chip_size: {chip_size_fix(chip, downs)}")
        for i, scene in enumerate(self.scenes):
            if isinstance(scene, SceneConfig) and scene.target is None:
                raise ValueError(f"scenes[{i}]: has no target; training scenes need one")
        return self


def chip_size_fix(chip: int, num_downs: int) -> str:
    """What to do about a chip side the U-Net cannot take: the nearest valid sides, and the
    deepest `num_downs` (at least 2) that takes this side."""
    multiple = 2**num_downs
    below, above = chip // multiple * multiple, (chip // multiple + 1) * multiple
    sides = f"{below} or {above}" if below else str(above)
    fits = [n for n in range(num_downs - 1, 1, -1) if chip % 2**n == 0]
    deeper = f", or set model.num_downs: {fits[0]} (2^{fits[0]} = {2 ** fits[0]})" if fits else ""
    return f"{chip} must be a multiple of 2^model.num_downs = {multiple}; use {sides}{deeper}"


class BatchPredictConfig(FrozenConfig):
    """Everything the batch-prediction flow needs; the one parameter of `batch_predict`."""

    workspace: str = Field(default="./work", description="Folder holding cached predictions.")
    model: str = Field(description="Model bundle folder (weights.safetensors + model.json).")
    scenes: list[str] = Field(
        default_factory=list,
        description="Scenes to predict: raster paths, comma-joined band files, or glob patterns "
        "(e.g. /data/incoming/*.tif); each match is one scene.",
    )
    items: list[StacRef] = Field(
        default_factory=list,
        description="STAC Items or ItemCollections to predict besides `scenes`: each item is "
        "one scene, its `assets` stacked as the source bands, named by the item id.",
    )
    output: str = Field(description="Mosaic GeoTIFF written over all predicted scenes.")
    predict: PredictConfig = Field(default_factory=PredictConfig, description="Inference.")
    mosaic: MosaicConfig = Field(default_factory=MosaicConfig, description="Mosaic grid.")
    dask: DaskConfig = Field(
        default_factory=DaskConfig,
        description="With an address, scenes are predicted on that Dask cluster.",
    )
    watchdog_s: WatchdogSeconds = WATCHDOG_S
    threads: Threads = None
