"""Streamed per-band statistics: mean, std and percentiles from histograms.

Chips arrive batch by batch; nothing but per-band counters and histograms is kept. 8- and
16-bit integer bands use one exact bin per value (one pass, percentiles equal numpy's "linear"
method); other dtypes take a first pass for the range and a second pass filling 65,536 bins,
so their percentiles are exact to within one bin width.
"""

from __future__ import annotations

import numpy as np

from p2p.bands.normalization import BandStats
from p2p.core.errors import StageError

FLOAT_BINS = 1 << 16
PERCENTILES = (0.5, 99.5)


class StatsAccumulator:
    """Accumulates statistics of `bands` bands of dtype `dtype` over valid pixels.

    Call `update` for every batch in pass 0, then (when `passes` is 2) again in pass 1.
    """

    def __init__(self, bands: int, dtype: str) -> None:
        dt = np.dtype(dtype)
        self.bands = bands
        self.exact = dt.kind in "ui" and dt.itemsize <= 2
        self.passes = 1 if self.exact else 2
        self.count = np.zeros(bands, np.int64)
        self.mean = np.zeros(bands, np.float64)
        self.m2 = np.zeros(bands, np.float64)
        self.lo = np.full(bands, np.inf)
        self.hi = np.full(bands, -np.inf)
        if self.exact:
            self.offset, nbins = int(np.iinfo(dt).min), 1 << (8 * dt.itemsize)
        else:
            self.offset, nbins = 0, FLOAT_BINS
        self.hist = np.zeros((bands, nbins), np.int64)

    def update(self, data: np.ndarray, valid: np.ndarray, pass_no: int = 0) -> None:
        """Add a batch: data ``(n, C, S, S)``, valid ``(n, S, S)`` bool."""
        for c in range(self.bands):
            values = data[:, c][valid]
            if values.size == 0:
                continue
            if pass_no == 0:
                self._moments(c, values)
            if self.exact:
                idx = values.astype(np.int64) - self.offset
                self.hist[c] += np.bincount(idx, minlength=self.hist.shape[1])
            elif pass_no == 1:
                self.hist[c] += self._binned(c, values)

    def _moments(self, c: int, values: np.ndarray) -> None:
        """Merge a batch's count, mean and M2 (Chan et al.), stable for large counts."""
        v = values.astype(np.float64)
        n_b, mean_b = v.size, float(v.mean())
        m2_b = float(((v - mean_b) ** 2).sum())
        n_a, total = self.count[c], self.count[c] + n_b
        delta = mean_b - self.mean[c]
        self.mean[c] += delta * n_b / total
        self.m2[c] += m2_b + delta**2 * n_a * n_b / total
        self.count[c] = total
        self.lo[c], self.hi[c] = min(self.lo[c], float(v.min())), max(self.hi[c], float(v.max()))

    def _binned(self, c: int, values: np.ndarray) -> np.ndarray:
        width = (self.hi[c] - self.lo[c]) / FLOAT_BINS or 1.0
        idx = np.clip(
            ((values.astype(np.float64) - self.lo[c]) / width).astype(np.int64), 0, FLOAT_BINS - 1
        )
        return np.bincount(idx, minlength=FLOAT_BINS)

    def _value(self, c: int, k: int, cum: np.ndarray) -> float:
        """Value of the k-th smallest valid pixel (0-based) of band c."""
        b = int(np.searchsorted(cum, k, side="right"))
        if self.exact:
            return float(self.offset + b)
        width = (self.hi[c] - self.lo[c]) / FLOAT_BINS
        return float(min(self.hi[c], self.lo[c] + (b + 0.5) * width))

    def percentile(self, c: int, q: float) -> float:
        """numpy-style ("linear") percentile `q` of band c from the histogram."""
        cum = np.cumsum(self.hist[c])
        pos = q / 100 * (self.count[c] - 1)
        k = int(np.floor(pos))
        low = self._value(c, k, cum)
        high = self._value(c, min(k + 1, int(self.count[c]) - 1), cum)
        return float(low + (pos - k) * (high - low))

    def result(self) -> BandStats:
        """The statistics; raises StageError when no valid pixel was seen."""
        if (self.count == 0).any():
            raise StageError("dataset", "a band has no valid pixel in the train split")
        std = np.sqrt(self.m2 / self.count)
        low = [self.percentile(c, PERCENTILES[0]) for c in range(self.bands)]
        high = [self.percentile(c, PERCENTILES[1]) for c in range(self.bands)]
        return BandStats(
            tuple(float(m) for m in self.mean),
            tuple(float(s) for s in std),
            tuple(low),
            tuple(high),
        )
