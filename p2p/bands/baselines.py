"""The two baselines a translation must beat: the per-band constant mean and a per-pixel linear
regression (source bands → each target band, least squares with an intercept).

Both are fitted on the valid pixels of the training chips (streamed: normal equations summed
chip batch by chip batch, in float64 around a shift so large raster values keep their digits),
stored beside the split and in the model bundle, and scored on the same pixels as the model.
`normalized_linear` turns the fit into the start of a `linear_anchor` generator. Needs only
numpy (and torch for that last conversion), so training code can use it on a bare GPU box.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from p2p.bands.normalization import BandStats

log = logging.getLogger(__name__)

BASELINES = ("mean", "linear")


@dataclass(frozen=True)
class Baselines:
    """Fitted baselines, in raster units.

    Attributes:
        mean: `(Ct,)` per-band mean of the valid training target.
        weight: `(Ct, Cs)` linear regression weights.
        bias: `(Ct,)` linear regression intercepts.
        pixels: Valid training pixels the fit used.
    """

    mean: tuple[float, ...]
    weight: tuple[tuple[float, ...], ...]
    bias: tuple[float, ...]
    pixels: int

    def predict(self, kind: str, source: np.ndarray) -> np.ndarray:
        """A baseline's prediction.

        Args:
            kind: "mean" or "linear".
            source: `(Cs, H, W)` raster units.

        Returns:
            `(Ct, H, W)` float64 in target units.
        """
        h, w = source.shape[-2:]
        flat = self.predict_pixels(kind, source.reshape(source.shape[0], -1))
        out: np.ndarray = flat.reshape(-1, h, w)
        return out

    def predict_pixels(self, kind: str, source: np.ndarray) -> np.ndarray:
        """A baseline's prediction for `(Cs, P)` source pixels: `(Ct, P)` float64."""
        if kind == "mean":
            return np.repeat(np.asarray(self.mean)[:, None], source.shape[1], axis=1)
        if kind != "linear":
            raise ValueError(f"baseline must be one of {BASELINES}, got {kind!r}")
        out: np.ndarray = np.asarray(self.weight) @ source.astype(np.float64)
        out += np.asarray(self.bias)[:, None]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "mean": list(self.mean),
            "weight": [list(r) for r in self.weight],
            "bias": list(self.bias),
            "pixels": self.pixels,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Baselines:
        """Inverse of `to_dict`."""
        return cls(
            mean=tuple(float(v) for v in data["mean"]),
            weight=tuple(tuple(float(v) for v in row) for row in data["weight"]),
            bias=tuple(float(v) for v in data["bias"]),
            pixels=int(data["pixels"]),
        )


class BaselineFit:
    """Streams the normal equations of ``y = W·x + b`` over valid pixels, batch by batch.

    Args:
        source_bands: Cs.
        target_bands: Ct.
    """

    def __init__(self, source_bands: int, target_bands: int) -> None:
        self._shift: np.ndarray | None = None
        self._xtx = np.zeros((source_bands + 1, source_bands + 1))
        self._xty = np.zeros((source_bands + 1, target_bands))

    def update(self, source: np.ndarray, target: np.ndarray) -> None:
        """Add valid pixels: source `(Cs, P)`, target `(Ct, P)`, raster units."""
        x = source.astype(np.float64).T  # (P, Cs)
        y = target.astype(np.float64).T  # (P, Ct)
        if not len(x):
            return
        if self._shift is None:  # centre on the first batch: sums of squares keep their digits
            self._shift = np.concatenate([x.mean(0), y.mean(0)])
        cs = x.shape[1]
        a = np.hstack([x - self._shift[:cs], np.ones((len(x), 1))])
        self._xtx += a.T @ a
        self._xty += a.T @ (y - self._shift[cs:])

    def result(self) -> Baselines:
        """The fitted baselines.

        Raises:
            ValueError: No valid pixel was seen.
        """
        n = int(np.rint(self._xtx[-1, -1]))
        if self._shift is None or n == 0:
            raise ValueError("no valid training pixel to fit the baselines on")
        cs = self._xtx.shape[0] - 1
        coef = np.linalg.lstsq(self._xtx, self._xty, rcond=None)[0]  # (Cs + 1, Ct)
        weight = coef[:cs].T
        x0, y0 = self._shift[:cs], self._shift[cs:]
        bias = coef[cs] + y0 - weight @ x0
        mean = y0 + self._xty[cs] / n
        return Baselines(
            mean=tuple(float(v) for v in mean),
            weight=tuple(tuple(float(v) for v in row) for row in weight),
            bias=tuple(float(v) for v in bias),
            pixels=n,
        )


def normalized_linear(
    fit: Baselines, source: BandStats, target: BandStats
) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear baseline expressed on normalized inputs and outputs (`p2p.bands.normalization`).

    With ``x = (x̂ + 1)/2 · sx + lx`` and ``ŷ = 2 (y − ly)/sy − 1`` (s = high − low), the fit
    ``y = W x + b`` becomes ``ŷ = W' x̂ + b'`` with ``W'[o, i] = W[o, i] · sx[i] / sy[o]``.

    Returns:
        `(Ct, Cs)` weight and `(Ct,)` bias, float32.
    """

    def span(s: BandStats) -> np.ndarray:
        d = np.asarray(s.high) - np.asarray(s.low)
        return np.where(d > 0, d, 1.0)

    sx, sy = span(source), span(target)
    w = np.asarray(fit.weight)
    lx, ly = np.asarray(source.low), np.asarray(target.low)
    w_norm = w * sx[None, :] / sy[:, None]
    b_norm = 2 * (w @ (sx / 2 + lx) + np.asarray(fit.bias) - ly) / sy - 1
    return torch.tensor(w_norm, dtype=torch.float32), torch.tensor(b_norm, dtype=torch.float32)


class BaselineScore:
    """Running MAE of both baselines over valid pixels (all bands pooled, as overall MAE)."""

    def __init__(self, fit: Baselines) -> None:
        self.fit = fit
        self._abs = dict.fromkeys(BASELINES, 0.0)
        self._count = 0

    def update(self, source: np.ndarray, target: np.ndarray) -> None:
        """Add valid pixels: source `(Cs, P)`, target `(Ct, P)`, raster units."""
        t = target.astype(np.float64)
        for kind in BASELINES:
            self._abs[kind] += float(np.abs(self.fit.predict_pixels(kind, source) - t).sum())
        self._count += int(t.size)

    def compute(self) -> dict[str, dict[str, float | None]]:
        """``{"mean": {"mae"}, "linear": {"mae"}}`` in target units (None without pixels)."""
        n = self._count
        return {k: {"mae": self._abs[k] / n if n else None} for k in BASELINES}


def skill(model_mae: float | None, baselines: dict[str, Any]) -> float | None:
    """The model's MAE over the linear baseline's (below 1: the model beats it)."""
    linear = (baselines.get("linear") or {}).get("mae")
    if model_mae is None or not linear:
        return None
    return float(model_mae) / float(linear)


def chip_pixels(
    source: np.ndarray, target: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The valid pixels of a chip batch: `(N, Cs, S, S)`, `(N, Ct, S, S)`, `(N, S, S)` bool →
    `(Cs, P)` and `(Ct, P)`."""
    return np.moveaxis(source, 1, 0)[:, valid], np.moveaxis(target, 1, 0)[:, valid]


def with_baselines(metrics: dict[str, Any], baselines: dict[str, Any]) -> dict[str, Any]:
    """`metrics` with the baselines' MAE on the same pixels and the model's skill beside them.

    Adds ``baselines`` (``{"linear": {"mae"}, "mean": {"mae"}}``) and ``skill`` (model MAE /
    linear MAE; under 1 the model beats the per-pixel linear regression). A model that does
    not is flagged in the log.
    """
    model_mae = metrics.get("overall", {}).get("mae")
    ratio = skill(model_mae, baselines)
    if ratio is not None and ratio >= 1:
        log.warning(
            "the model (MAE %.4g) is no better than the per-pixel linear regression (MAE %.4g): "
            "ratio %.2f",
            model_mae,
            baselines["linear"]["mae"],
            ratio,
        )
    return {**metrics, "baselines": baselines, "skill": ratio}
