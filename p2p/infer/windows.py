"""Window geometry and blending weights for seamless tiled inference.

A scene axis of `size` pixels is covered by windows of `tile` pixels whose centre regions,
`stride = tile - 2·overlap` pixels each, partition the axis: window k spans
``[k·stride - overlap, k·stride - overlap + tile)`` and its centre ``[k·stride, (k+1)·stride)``.
Parts of a window outside the scene are filled by reflection, so border pixels see as much
context as interior ones. A row strip of the output is the centre region of one row of windows.

Blending is separable: each window's 2-D weight is the outer product of one weight vector per
axis, and each axis' vectors are divided by their sum at every pixel, so the weights of all
windows covering a pixel sum to one (up to float rounding) for any tile, overlap and size.
Profiles: ``cosine`` ramps as sin² over the 2·overlap pixels shared with a neighbour (a window's
outer pixels, where the network lacks context, get almost no weight); ``linear`` ramps
linearly; ``none`` keeps each window's centre only (weight 1 there, 0 elsewhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np

Blend = Literal["cosine", "linear", "none"]


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of `multiple` that is >= `value`."""
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class AxisLayout:
    """Windows along one axis of a scene.

    Attributes:
        size: Scene pixels along the axis.
        tile: Window length in pixels.
        overlap: Pixels shared with each neighbour on each side (0 for a single window).
        blend: Weight profile.
    """

    size: int
    tile: int
    overlap: int
    blend: Blend = "cosine"

    def __post_init__(self) -> None:
        if self.size < 1 or self.tile < 1 or self.overlap < 0 or 2 * self.overlap >= self.tile:
            raise ValueError(f"invalid axis layout {self}")

    @property
    def stride(self) -> int:
        """Step between windows, the length of a centre region."""
        return self.tile - 2 * self.overlap

    @property
    def count(self) -> int:
        """Number of windows."""
        return math.ceil(self.size / self.stride)

    def start(self, k: int) -> int:
        """First pixel of window k (negative at the leading edge: reflected context)."""
        return k * self.stride - self.overlap

    def centre(self, k: int) -> tuple[int, int]:
        """Scene pixels `[a, b)` whose output comes from window k's centre (a strip or column)."""
        return k * self.stride, min((k + 1) * self.stride, self.size)

    def covering(self, a: int, b: int) -> range:
        """Indices of the windows that overlap scene pixels `[a, b)`."""
        first = max(0, (a + self.overlap - self.tile) // self.stride + 1)
        last = min(self.count - 1, (b - 1 + self.overlap) // self.stride)
        return range(first, last + 1)

    def profile(self) -> np.ndarray:
        """Unnormalized weight of each window position, `(tile,)` float64, positive except
        outside the centre for ``none``."""
        u = np.arange(self.tile, dtype=np.float64)
        if self.blend == "none" or self.overlap == 0:
            w = np.zeros(self.tile)
            w[self.overlap : self.tile - self.overlap] = 1.0
            return w
        ramp = 2 * self.overlap
        # +0.5 samples pixel centres, so even the outermost pixel keeps a small positive weight
        rise = np.clip((u + 0.5) / ramp, 0.0, 1.0)
        fall = np.clip((self.tile - u - 0.5) / ramp, 0.0, 1.0)
        t = np.minimum(rise, fall)
        if self.blend == "cosine":
            t = np.sin(t * np.pi / 2) ** 2
        return t

    @cached_property
    def weights(self) -> np.ndarray:
        """Normalized weights, `(count, tile)` float64: row k weighs window k's pixels.

        Entries for positions outside the scene are 0; at every scene pixel the entries of all
        windows covering it sum to one.
        """
        raw = self.profile()
        out = np.zeros((self.count, self.tile))
        total = np.zeros(self.size)
        for k in range(self.count):
            lo, hi = self._inside(k)
            out[k, lo:hi] = raw[lo:hi]
            s = self.start(k)
            total[s + lo : s + hi] += raw[lo:hi]
        for k in range(self.count):
            lo, hi = self._inside(k)
            s = self.start(k)
            out[k, lo:hi] /= total[s + lo : s + hi]
        return out

    @cached_property
    def unit_runs(self) -> list[tuple[int, int]]:
        """Per window, the window-local run `[a, b)` where its weight, as float32, is exactly 1
        (its centre; `(0, 0)` where there is none): `add_weighted` adds it unweighted."""
        runs = []
        for row in self.weights.astype(np.float32) == 1:
            a = int(row.argmax())
            runs.append((a, a + int(np.argmin(np.append(row[a:], False)))) if row.any() else (0, 0))
        return runs

    def _inside(self, k: int) -> tuple[int, int]:
        """Window-local range `[lo, hi)` of window k that lies inside the scene."""
        s = self.start(k)
        return max(0, -s), min(self.tile, self.size - s)


def axis_layout(size: int, tile: int, overlap: int, multiple: int, blend: Blend) -> AxisLayout:
    """Lay out one axis; an axis shorter than `tile` gets one window of `size` rounded up to
    `multiple` (the model's input multiple) with no overlap.

    Raises:
        ValueError: `size` is smaller than `multiple` (no window the model accepts fits).
    """
    if size >= tile:
        return AxisLayout(size, tile, overlap, blend)
    if size < multiple:
        raise ValueError(f"{size} px is smaller than the model's input multiple {multiple}")
    return AxisLayout(size, round_up(size, multiple), 0, blend)


def reflect_index(positions: np.ndarray, size: int) -> np.ndarray:
    """Map pixel positions, possibly outside `[0, size)`, to the scene pixels that mirror them
    about the scene's edge pixels (numpy's ``reflect``: the edge pixel is not repeated).

    Positions farther out than the scene is long reflect back and forth, so any window fits
    any scene of at least one pixel.

    Args:
        positions: Integer positions along one axis.
        size: Scene pixels along that axis.

    Returns:
        Indices in `[0, size)`, same shape as `positions`.
    """
    if size == 1:
        return np.zeros_like(positions)
    period = 2 * (size - 1)
    m = np.mod(positions, period)
    out: np.ndarray = np.where(m >= size, period - m, m)
    return out


def take_runs(x: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
    """``x.take(index, axis)``, copying each run of consecutive indices as one slice.

    A reflected window index (`reflect_index`) is the scene's pixels in order with a few
    mirrored ones at an edge: slices copy it about 20x faster than numpy's element-wise
    gather (0.26 against 5.2 ms for a 3 x 256 x 1600 float32 read), with the same values.

    Args:
        x: Any array.
        index: 1-D integer positions along `axis`.
        axis: The axis taken from (non-negative).

    Returns:
        A new array, `x`'s shape with `len(index)` along `axis`.
    """
    out = np.empty((*x.shape[:axis], len(index), *x.shape[axis + 1 :]), dtype=x.dtype)
    ends = [*(np.flatnonzero(np.diff(index) != 1) + 1).tolist(), len(index)]
    lead = (slice(None),) * axis
    start = 0
    for end in ends:
        first = int(index[start])
        out[(*lead, slice(start, end))] = x[(*lead, slice(first, first + end - start))]
        start = end
    return out


def add_weighted(dst: Any, src: Any, w: Any, ones: tuple[int, int], axis: int) -> None:
    """``dst += src * w``, `w` along `axis` of `src` (its first axis).

    On numpy arrays the multiply is left out on `ones` (`[a, b)` along that axis, where `w` is
    exactly 1, `AxisLayout.unit_runs`): the same float32 sums (x·1 is x), with one pass over a
    window's centre instead of two and no temporary. Torch tensors (on a GPU) take the one
    multiply and add: there the kernel launches a split adds would cost more than the pass.
    """
    if not isinstance(dst, np.ndarray):
        dst += src * w
        return
    n = src.shape[axis]
    a, b = min(max(ones[0], 0), n), min(max(ones[1], 0), n)
    a, b = (a, b) if a < b else (n, n)
    lead = (slice(None),) * axis
    for lo, hi, unit in ((0, a, False), (a, b, True), (b, n, False)):
        if lo < hi:
            part = (*lead, slice(lo, hi))
            dst[part] += src[part] if unit else src[part] * w[lo:hi]
