"""Spectral fidelity of multiband predictions: spectral angle and normalized-difference indices.

- SAM (spectral angle mapper): per pixel, the angle in degrees between the predicted and the
  reference spectrum (the band values as a vector), ``acos(p·t / (|p| |t|))``; its mean and
  95th percentile over the valid pixels (pixels where either spectrum is all zero have no
  angle and are left out). The percentile is read from a histogram of 0.001° bins, so the
  scene is streamed: it is the centre of the bin holding the nearest-rank 95th percentile
  (the ⌈0.95·n⌉-th smallest angle), exact to half a bin, 0.0005°.
- Index fidelity: a normalized difference ``(a - b) / (a + b)`` of two bands (NDVI from NIR
  and red, NDWI, ...), computed from the prediction and from the reference, and its mean
  absolute error; beside it, the same index from the per-pixel linear baseline's bands on the
  same pixels (`p2p.bands.baselines`), when the baseline is given. Pixels where a denominator
  is zero are left out.

Numpy only; accumulators keep sums, so windows add up to the whole scene.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from p2p.core.errors import ConfigError

#: Width of the SAM histogram bins, degrees (the precision of the 95th percentile).
SAM_BIN = 0.001
SAM_BINS = round(180 / SAM_BIN)
SAM_QUANTILE = 0.95


@dataclass(frozen=True)
class IndexSpec:
    """A normalized difference ``(a - b) / (a + b)`` of two bands.

    Attributes:
        name: What it is called (e.g. ndvi).
        a: 0-based band of the numerator's minuend (e.g. NIR).
        b: 0-based band subtracted (e.g. red).
    """

    name: str
    a: int
    b: int


def parse_index(text: str, names: Sequence[str]) -> IndexSpec:
    """``NAME=A,B`` with A and B band names (as in `names`, case-insensitive) or 1-based numbers.

    Raises:
        ConfigError: malformed text, or a band that is not among `names`.
    """
    name, sep, bands = text.partition("=")
    parts = [p.strip() for p in bands.split(",")]
    if not sep or not name.strip() or len(parts) != 2 or not all(parts):
        raise ConfigError("--index", f"{text!r} is not NAME=A,B (e.g. ndvi=nir,red or ndvi=4,3)")
    lowered = [n.lower() for n in names]
    picked = []
    for part in parts:
        if part.isdigit() and 1 <= int(part) <= len(names):
            picked.append(int(part) - 1)
        elif part.lower() in lowered:
            picked.append(lowered.index(part.lower()))
        else:
            raise ConfigError(
                "--index",
                f"{text}: no band {part!r} (bands: {', '.join(names)}, or 1..{len(names)})",
            )
    if picked[0] == picked[1]:
        raise ConfigError("--index", f"{text}: the two bands are the same")
    return IndexSpec(name.strip(), picked[0], picked[1])


def spectral_angles(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Angles in degrees between `(C, P)` spectra, pixels where both norms are positive
    only: `(P',)` float64."""
    p, t = pred.astype(np.float64), target.astype(np.float64)
    norms = np.sqrt((p * p).sum(0) * (t * t).sum(0))
    keep = norms > 0
    cos = (p[:, keep] * t[:, keep]).sum(0) / norms[keep]
    out: np.ndarray = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    return out


def normalized_difference(values: np.ndarray, spec: IndexSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(a - b) / (a + b)`` of `(C, P)` pixels: values `(P,)` (0 where undefined) and
    `(P,)` bool where the denominator is non-zero."""
    a, b = values[spec.a].astype(np.float64), values[spec.b].astype(np.float64)
    den = a + b
    ok = den != 0
    return np.divide(a - b, den, out=np.zeros_like(den), where=ok), ok


class SpectralAccumulator:
    """Running SAM histogram and index errors over many windows of valid pixels.

    Args:
        bands: Bands of prediction and reference (SAM needs at least 2).
        indices: Normalized differences to score.
    """

    def __init__(self, bands: int, indices: Sequence[IndexSpec] = ()) -> None:
        self.bands = bands
        self.indices = list(indices)
        self._hist = np.zeros(SAM_BINS, dtype=np.int64)
        self._sam_sum = 0.0
        self._abs = np.zeros((len(self.indices), 2))  # model, linear
        self._count = np.zeros(len(self.indices), dtype=np.int64)
        self._linear = False

    def update(
        self, pred: np.ndarray, target: np.ndarray, linear: np.ndarray | None = None
    ) -> None:
        """Add valid pixels: prediction, reference and (optionally) the linear baseline's
        prediction, each `(C, P)` in target units."""
        if self.bands >= 2 and pred.shape[1]:
            angles = spectral_angles(pred, target)
            self._sam_sum += float(angles.sum())
            bins = np.minimum((angles / SAM_BIN).astype(np.int64), SAM_BINS - 1)
            self._hist += np.bincount(bins, minlength=SAM_BINS)
        self._linear |= linear is not None
        for k, spec in enumerate(self.indices):
            ip, okp = normalized_difference(pred, spec)
            it, ok = normalized_difference(target, spec)
            ok &= okp
            il = None
            if linear is not None:
                il, okl = normalized_difference(linear, spec)
                ok &= okl
            self._count[k] += int(ok.sum())
            self._abs[k, 0] += float(np.abs(ip[ok] - it[ok]).sum())
            if il is not None:
                self._abs[k, 1] += float(np.abs(il[ok] - it[ok]).sum())

    def sam(self) -> dict[str, Any] | None:
        """``{"mean", "p95", "pixels"}`` in degrees, None for single-band data."""
        if self.bands < 2:
            return None
        n = int(self._hist.sum())
        if not n:
            return {"mean": None, "p95": None, "pixels": 0}
        rank = int(np.ceil(SAM_QUANTILE * n))  # nearest rank
        held = int(np.searchsorted(np.cumsum(self._hist), rank))  # the bin holding that rank
        return {"mean": self._sam_sum / n, "p95": (held + 0.5) * SAM_BIN, "pixels": n}

    def index_scores(self) -> list[dict[str, Any]]:
        """Per index: ``{"name", "bands": [a, b] (1-based), "mae", "linear_mae", "pixels"}``
        (``linear_mae`` None without the baseline; MAEs None without pixels)."""
        out = []
        for k, spec in enumerate(self.indices):
            n = int(self._count[k])
            out.append(
                {
                    "name": spec.name,
                    "bands": [spec.a + 1, spec.b + 1],
                    "mae": float(self._abs[k, 0] / n) if n else None,
                    "linear_mae": float(self._abs[k, 1] / n) if n and self._linear else None,
                    "pixels": n,
                }
            )
        return out
