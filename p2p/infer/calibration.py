"""Whether an uncertainty raster means something: how well it ranks the prediction's errors.

For each band, over the pixels valid in the prediction, the reference and the uncertainty
raster: the Spearman rank correlation between the uncertainty and the absolute error, and the
mean absolute error of the most and of the least uncertain tenth of the pixels. An
uncertainty that ranks the errors well has a correlation near 1 and a most-uncertain decile
whose error is many times the least-uncertain one's.

Ranks need every value at once, so a scene is streamed into a random subsample: each valid
pixel is kept with probability ``min(1, max_samples / pixels)`` (`pixels`: the valid count the
first evaluation pass found), drawn from a generator with a fixed seed in window order, so a
rerun gives the same figures and memory stays under ``max_samples`` pairs per band (about
16 MB at the default 1e6) whatever the scene's size. A scene of at most `max_samples` valid
pixels is used whole, and the figures are then exact. Tied values share their average rank; the
deciles are the first and last tenth (at least one pixel) of the pixels sorted by uncertainty
(stable, so ties keep scan order).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Most (uncertainty, |error|) pairs kept per band.
MAX_SAMPLES = 1_000_000
#: Seed of the subsample (fixed: the figures are reproducible).
SEED = 0


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values` `(n,)`, ties sharing their average rank. Returns `(n,)` float64."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse.ravel()]


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation of `(n,)` arrays: Pearson's of their average ranks; None
    when either is constant or n < 2."""
    if a.size < 2:
        return None
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    norm = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return None if norm == 0.0 else float((ra * rb).sum() / norm)


def decile_errors(uncertainty: np.ndarray, error: np.ndarray) -> tuple[float, float] | None:
    """Mean of `error` over the most and over the least uncertain tenth (at least one pixel) of
    `(n,)` pairs, in error units; None for no pairs."""
    if uncertainty.size == 0:
        return None
    order = np.argsort(uncertainty, kind="stable")
    k = max(1, uncertainty.size // 10)
    return float(error[order[-k:]].mean()), float(error[order[:k]].mean())


class UncertaintyAccumulator:
    """Streams (uncertainty, |error|) pairs window by window into a fixed-seed subsample.

    Args:
        bands: Number of bands (the uncertainty raster's, one per predicted band).
        pixels: Valid pixels expected over the scene (sets the keep probability).
        max_samples: Most pairs kept per band.
        seed: The subsample's seed.
    """

    def __init__(
        self, bands: int, pixels: int, max_samples: int = MAX_SAMPLES, seed: int = SEED
    ) -> None:
        self.keep = min(1.0, max_samples / max(pixels, 1))
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.uncertainty: list[list[np.ndarray]] = [[] for _ in range(bands)]
        self.error: list[list[np.ndarray]] = [[] for _ in range(bands)]
        self.pixels = 0

    def update(self, uncertainty: np.ndarray, error: np.ndarray) -> None:
        """Add one window's valid pixels: `(C, n)` uncertainty and absolute error."""
        self.pixels += uncertainty.shape[1]
        chosen = slice(None) if self.keep >= 1.0 else self.rng.random(error.shape[1]) < self.keep
        for band in range(uncertainty.shape[0]):
            self.uncertainty[band].append(uncertainty[band, chosen].astype(np.float64))
            self.error[band].append(error[band, chosen].astype(np.float64))

    def compute(self, names: list[str]) -> dict[str, Any]:
        """Per band: ``{"name", "spearman", "mae_most_uncertain", "mae_least_uncertain",
        "pixels", "sampled"}`` (None where undefined), and how the pixels were chosen."""
        bands = []
        for band, name in enumerate(names):
            u = np.concatenate(self.uncertainty[band]) if self.uncertainty[band] else np.zeros(0)
            e = np.concatenate(self.error[band]) if self.error[band] else np.zeros(0)
            deciles = decile_errors(u, e)
            bands.append({
                "name": name,
                "spearman": spearman(u, e),
                "mae_most_uncertain": deciles[0] if deciles else None,
                "mae_least_uncertain": deciles[1] if deciles else None,
                "pixels": self.pixels,
                "sampled": int(u.size),
            })  # fmt: skip
        method = "all valid pixels" if self.keep >= 1.0 else f"random subsample, seed {self.seed}"
        return {"bands": bands, "method": method}
