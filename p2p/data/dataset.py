"""Datasets: filter chips, split train/val spatially, and compute band statistics.

Chips under `min_valid_fraction` are dropped. The split assigns whole blocks of
`split_block_chips` x `split_block_chips` chip positions (per scene) to train or val, seeded;
a chip whose footprint reaches into a block of the other side is dropped too, so with
overlapping chips no pixel is seen by both sides. Band statistics come from the valid pixels
of the train split only, streamed chip batch by chip batch (see `p2p.data.bandstats`).

`ChipDataset` is the torch view of a finished dataset folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from p2p.bands.augment import dihedral_pair
from p2p.bands.baselines import BaselineFit, Baselines, BaselineScore, chip_pixels
from p2p.bands.normalization import BandStats, prepare_window
from p2p.core import files, storage
from p2p.core.cache import read_manifest
from p2p.core.config import DatasetConfig, TilingConfig
from p2p.core.errors import StageError
from p2p.core.fsutil import atomic_write_json
from p2p.data import chipstore
from p2p.data.bandstats import StatsAccumulator

log = logging.getLogger(__name__)

SPLIT = "split.json"
STATS = "stats.json"
BASELINES = "baselines.json"
#: Fewer training chips than this gets a warning: a model overfits them.
SMALL_TRAIN = 100
BATCH_CHIPS = 64
Sample = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _tile_info(tile_dir: str | Path) -> tuple[str, dict[str, Any]]:
    """The key and meta of a finished tile-stage folder."""
    manifest = read_manifest(tile_dir)
    if manifest is None:
        raise StageError(tile_dir, "not a finished tile stage (no manifest.json); run tiling first")
    return str(manifest["key"]), chipstore.read_meta(tile_dir)


def _check_compatible(tile_dirs: Sequence[str], metas: list[dict[str, Any]]) -> None:
    first = metas[0]
    for path, meta in zip(tile_dirs[1:], metas[1:], strict=True):
        for side in ("source", "target"):
            a, b = first[side], meta[side]
            if (a["count"], a["dtype"]) != (b["count"], b["dtype"]):
                raise StageError(
                    path,
                    f"{side} has {b['count']} {b['dtype']} band(s) but {tile_dirs[0]} has "
                    f"{a['count']} {a['dtype']}; all scenes of a dataset must match",
                )
        if meta["chip_size"] != first["chip_size"]:
            raise StageError(path, f"chip_size {meta['chip_size']} != {first['chip_size']}")


def spatial_split(
    index: pd.DataFrame, chip_size: int, stride: int, config: DatasetConfig
) -> pd.DataFrame:
    """Assign chips to train/val by spatial blocks; drop chips straddling the two sides.

    Args:
        index: Chips with columns ``tile`` (scene number), ``x0``, ``y0`` (pixel offsets).
        chip_size: Chip side in pixels.
        stride: Chip step in pixels; a block spans ``split_block_chips * stride`` pixels.
        config: Split settings.

    Returns:
        `index` restricted to kept chips with a ``split`` column ("train" or "val").
        When `val_fraction` > 0 but every chip falls in one block, blocks are halved until
        there are two, so validation is never silently empty.
    """
    block_chips = config.split_block_chips
    while True:
        span = block_chips * stride
        home = list(zip(index["tile"], index["y0"] // span, index["x0"] // span, strict=True))
        blocks = sorted(set(home))
        if len(blocks) >= 2 or block_chips == 1 or config.val_fraction == 0:
            break
        block_chips //= 2
    if block_chips != config.split_block_chips:
        log.warning(
            "split: the chips fill one block of dataset.split_block_chips=%d; using %d so that "
            "validation gets a block (set it lower to choose)",
            config.split_block_chips,
            block_chips,
        )
    order = np.random.default_rng(config.seed).permutation(len(blocks))
    n_val = round(config.val_fraction * len(blocks))
    if config.val_fraction > 0 and len(blocks) >= 2:
        n_val = min(max(n_val, 1), len(blocks) - 1)
    side = {blocks[k]: ("val" if rank < n_val else "train") for rank, k in enumerate(order)}
    keep: list[bool] = []
    labels: list[str] = []
    for t, y0, x0 in zip(index["tile"], index["y0"], index["x0"], strict=True):
        touched = {
            side[(t, by, bx)]
            for by in range(y0 // span, (y0 + chip_size - 1) // span + 1)
            for bx in range(x0 // span, (x0 + chip_size - 1) // span + 1)
            if (t, by, bx) in side
        }
        keep.append(len(touched) == 1)
        labels.append(touched.pop() if len(touched) == 1 else "")
    out = index.assign(split=labels)[keep]
    dropped = len(index) - len(out)
    if dropped:
        log.info("split: dropped %d chips overlapping both sides", dropped)
    return out.reset_index(drop=True)


def _chip_batches(
    tile_dirs: Sequence[str], chips: pd.DataFrame
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The chips of `chips` (columns tile, chip) in batches of `BATCH_CHIPS`: source
    `(N, Cs, S, S)`, target `(N, Ct, S, S)`, valid `(N, S, S)` bool, raster units."""
    for t, group in chips.groupby("tile", sort=True):
        arrays = chipstore.open_arrays(tile_dirs[int(str(t))])
        slots = np.sort(group["chip"].to_numpy())
        for lo in range(0, len(slots), BATCH_CHIPS):
            batch = slots[lo : lo + BATCH_CHIPS]
            valid = np.asarray(arrays["valid"].oindex[batch], dtype=bool)
            yield arrays["source"].oindex[batch], arrays["target"].oindex[batch], valid


def compute_stats(
    tile_dirs: Sequence[str], train: pd.DataFrame, metas: list[dict[str, Any]]
) -> tuple[BandStats, BandStats]:
    """Per-band statistics of source and target over valid pixels of the train chips."""
    meta = metas[0]
    acc = {
        side: StatsAccumulator(meta[side]["count"], meta[side]["dtype"])
        for side in ("source", "target")
    }
    for pass_no in range(max(a.passes for a in acc.values())):
        for source, target, valid in _chip_batches(tile_dirs, train):
            for a, values in ((acc["source"], source), (acc["target"], target)):
                if pass_no < a.passes:
                    a.update(values, valid, pass_no)
    return acc["source"].result(), acc["target"].result()


def fit_baselines(
    tile_dirs: Sequence[str], train: pd.DataFrame, val: pd.DataFrame, metas: list[dict[str, Any]]
) -> tuple[Baselines, dict[str, Any]]:
    """Fit the constant-mean and linear baselines on the train chips; score them on val.

    Returns:
        The fit, and ``{"mean": {"mae"}, "linear": {"mae"}}`` over the valid pixels of the
        validation chips (None without validation chips), target units.
    """
    fit = BaselineFit(metas[0]["source"]["count"], metas[0]["target"]["count"])
    for source, target, valid in _chip_batches(tile_dirs, train):
        fit.update(*chip_pixels(source, target, valid))
    baselines = fit.result()
    score = BaselineScore(baselines)
    for source, target, valid in _chip_batches(tile_dirs, val):
        score.update(*chip_pixels(source, target, valid))
    return baselines, score.compute()


def check_tiles(tile_dirs: Sequence[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """The keys and chip-store metas of finished tile (or import) folders that fit together.

    Raises:
        StageError: no folder, a folder that is not a finished tile stage, or scenes that
            disagree in bands or chip size.
    """
    if not tile_dirs:
        raise StageError("dataset", "no tile folders given")
    infos = [_tile_info(d) for d in tile_dirs]
    keys, metas = [k for k, _ in infos], [m for _, m in infos]
    _check_compatible(tile_dirs, metas)
    return keys, metas


def build_dataset(
    folder: Path, tile_dirs: Sequence[str], config: DatasetConfig, tiling: TilingConfig
) -> dict[str, Any]:
    """Write ``split.json``, ``stats.json`` and ``baselines.json`` for the chips of `tile_dirs`
    into `folder`.

    Args:
        folder: The dataset folder.
        tile_dirs: Finished tile or import folders (resolved paths), in scene order.
        config: Split settings.
        tiling: Its `min_valid_fraction` filters the chips.

    Returns:
        The summary: n_train, n_val, band names, dtypes, nodata, chip_size, the tile folders,
        ``chips`` (total, dropped_nodata, dropped_straddling, train, val) and ``baselines``
        (the constant mean's and the linear regression's MAE on the validation chips).

    Raises:
        StageError: see `check_tiles`, or no chip passes `min_valid_fraction`.
    """
    tile_dirs = list(tile_dirs)
    keys, metas = check_tiles(tile_dirs)
    frames = [chipstore.read_index(d).assign(tile=t) for t, d in enumerate(tile_dirs)]
    index = pd.concat(frames, ignore_index=True)
    kept = index[index["valid_fraction"] >= tiling.min_valid_fraction]
    if kept.empty:
        raise StageError(
            tile_dirs[0],
            f"no chip has valid_fraction >= {tiling.min_valid_fraction} "
            f"(of {len(index)} chips); lower tiling.min_valid_fraction or check nodata",
        )
    split = spatial_split(kept, metas[0]["chip_size"], metas[0]["stride"], config)
    train, val = split[split["split"] == "train"], split[split["split"] == "val"]
    source, target = compute_stats(tile_dirs, train, metas)
    fit, scores = fit_baselines(tile_dirs, train, val, metas)
    atomic_write_json(folder / STATS, {"source": source.to_dict(), "target": target.to_dict()})
    atomic_write_json(folder / BASELINES, fit.to_dict())
    tiles = [
        {"path": d, "key": k, "stage": Path(d).parent.name}
        for d, k in zip(tile_dirs, keys, strict=True)
    ]
    atomic_write_json(
        folder / SPLIT,
        {
            "tiles": tiles,
            "train": train[["tile", "chip"]].to_numpy().tolist(),
            "val": val[["tile", "chip"]].to_numpy().tolist(),
            "dropped_low_valid": len(index) - len(kept),
            "dropped_straddling": len(kept) - len(split),
        },
    )
    chips = {
        "total": len(index),
        "dropped_nodata": len(index) - len(kept),
        "dropped_straddling": len(kept) - len(split),
        "train": len(train),
        "val": len(val),
    }
    _warn_small(chips, config, tiling)
    summary = _summary(metas[0], len(train), len(val), tile_dirs)
    return {**summary, "chips": chips, "baselines": scores}


def _warn_small(chips: dict[str, int], config: DatasetConfig, tiling: TilingConfig) -> None:
    """One log line each when training or validation is starved, naming what to change."""
    counts = (
        f"{chips['train']} train and {chips['val']} validation chips of {chips['total']} "
        f"({chips['dropped_nodata']} dropped for nodata, {chips['dropped_straddling']} for "
        "straddling the split)"
    )
    log.info("dataset: %s", counts)
    if chips["train"] < SMALL_TRAIN:
        log.warning(
            "dataset: only %s; under ~%d training chips a model overfits: lower tiling.stride "
            "(now %d) for overlapping chips, or tiling.chip_size (now %d), or add scenes",
            counts,
            SMALL_TRAIN,
            tiling.stride,
            tiling.chip_size,
        )
    if config.val_fraction > 0 and chips["val"] == 0:
        log.warning(
            "dataset: no validation chip (%s); lower dataset.split_block_chips (now %d)",
            counts,
            config.split_block_chips,
        )


def _summary(meta: dict[str, Any], n_train: int, n_val: int, tiles: list[str]) -> dict[str, Any]:
    return {
        "n_train": n_train,
        "n_val": n_val,
        **chipstore.sides_summary(meta),
        "chip_size": meta["chip_size"],
        "tile_dirs": tiles,
    }


def load_baselines(dataset_dir: files.Location) -> Baselines:
    """The baselines fitted on a dataset folder's training chips."""
    data = files.read_json(files.join(dataset_dir, BASELINES))
    if data is None:
        raise StageError(dataset_dir, "no baselines.json: a dataset stage from an older p2p")
    return Baselines.from_dict(data)


def load_stats(dataset_dir: files.Location) -> tuple[BandStats, BandStats]:
    """The (source, target) band statistics of a dataset folder."""
    data = files.read_json(files.join(dataset_dir, STATS))
    if data is None:
        raise StageError(dataset_dir, "no stats.json: not a finished dataset stage")
    return BandStats.from_dict(data["source"]), BandStats.from_dict(data["target"])


def _tile_path(dataset_dir: files.Location, entry: dict[str, str]) -> str:
    """A tile folder recorded in split.json; found beside the dataset when a local workspace
    moved (a bucket's URLs stay where they are)."""
    if storage.is_remote(entry["path"]) or Path(entry["path"]).is_dir():
        return entry["path"]
    return str(Path(dataset_dir).parent.parent / entry.get("stage", "tile") / entry["key"])


class ChipDataset(Dataset[Sample]):
    """Paired chips of one split, normalized with the train statistics.

    Each item is ``(source (Cs, S, S), target (Ct, S, S), valid (1, S, S))``, all float32:
    source and target in [-1, 1] with invalid pixels set to 0, valid as 0/1. Chips are read one
    at a time from the Zarr stores, which are opened lazily in each process, so the dataset is
    safe with DataLoader workers and never loads a whole store.

    Args:
        dataset_dir: A finished dataset-stage folder.
        split: "train" or "val".
        augment: Apply the same random flip/rot90 to source, target and valid.
        seed: Seed of the augmentation; the draw depends on (seed, epoch, index) only.
    """

    def __init__(
        self,
        dataset_dir: str | Path,
        split: Literal["train", "val"],
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        self.dataset_dir = dataset_dir if storage.is_remote(dataset_dir) else Path(dataset_dir)
        info = files.read_json(files.join(self.dataset_dir, SPLIT))
        if info is None:
            raise StageError(dataset_dir, "no split.json: not a finished dataset stage")
        self.tile_dirs = [_tile_path(self.dataset_dir, e) for e in info["tiles"]]
        self.items = np.asarray(info[split], dtype=np.int64).reshape(-1, 2)
        self.source_stats, self.target_stats = load_stats(self.dataset_dir)
        meta = chipstore.read_meta(self.tile_dirs[0])
        self.source_bands: list[str] = meta["source"]["band_names"]
        self.target_bands: list[str] = meta["target"]["band_names"]
        self.chip_size: int = meta["chip_size"]
        self.augment, self.seed, self.epoch = augment, seed, 0
        self._arrays: dict[int, dict[str, Any]] = {}
        self._pid = -1

    @property
    def worker_start_method(self) -> str | None:
        """How DataLoader workers must start: ``spawn`` for chips in a bucket (obstore's
        runtime does not survive fork: a forked worker hangs), else the platform's default."""
        return "spawn" if any(storage.is_remote(d) for d in self.tile_dirs) else None

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of `epoch`."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"], state["_pid"] = {}, -1
        return state

    def _open(self, tile: int) -> dict[str, Any]:
        if self._pid != os.getpid():  # a forked worker must not reuse the parent's handles
            self._arrays, self._pid = {}, os.getpid()
        if tile not in self._arrays:
            self._arrays[tile] = chipstore.open_arrays(self.tile_dirs[tile])
        return self._arrays[tile]

    def __getitem__(self, i: int) -> Sample:
        tile, slot = (int(v) for v in self.items[i])
        arrays = self._open(tile)
        valid = np.asarray(arrays["valid"][slot], dtype=bool)
        x = prepare_window(np.asarray(arrays["source"][slot]), valid, self.source_stats)
        y = prepare_window(np.asarray(arrays["target"][slot]), valid, self.target_stats)
        m = valid[None].astype(np.float32)
        sample = (torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(m))
        if not self.augment:
            return sample
        k = int(np.random.default_rng([self.seed, self.epoch, i]).integers(8))
        return dihedral_pair(sample, k)
