"""Where the strip loop's arrays live: numpy on the host, or torch tensors on the model's device.

The strip loop (`p2p.infer.strips`) is written once against what numpy arrays and torch
tensors share (slicing, ``+=``, ``*`` with broadcasting); a `Windows` supplies the rest: model
input from the pixels read, allocation, the way to and from the host, and the model itself.

- `NumpyWindows` (the CPU, and any runtime): windows are prepared on the reader thread with
  numpy, the model takes and returns numpy batches.
- `TorchWindows` (CUDA): the reader thread only pins the raw pixels; normalization,
  reflect-padding, the test-time symmetries and both blends run on the device, and only
  finished strips (and the carry at commits) come back to the host.

Both run the same float32 operations in the same order, so on the CPU they agree to float32
rounding (tests/test_engine.py); on CUDA the model's autocast sets the precision
(docs/inference.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from p2p.bands.normalization import BandStats, normalize, prepare_window
from p2p.infer.windows import take_runs

if TYPE_CHECKING:
    import torch

#: A numpy array or a torch tensor, as the `Windows` in use makes them.
Array = Any


class WindowModel(Protocol):
    """`(N, C_in, h, w)` float32 normalized → `(N, C_out, h, w)` float32 normalized."""

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class TensorModel(Protocol):
    """A `WindowModel` that also runs batches already on its device (`run`), with no host
    copy: `(N, C_in, h, w)` float32 normalized tensor → the same for `C_out`, on that device."""

    device: torch.device

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...

    def run(self, x: torch.Tensor) -> torch.Tensor: ...


class Windows(Protocol):
    """The model and the array operations of one run of the strip loop."""

    def stage(self, data: np.ndarray, valid: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> Any:
        """On the reader thread: pixels read → what `rows` needs.

        Args:
            data: `(C_in, h, w)` raster values as read.
            valid: `(h, w)` bool.
            iy, ix: int64 positions in `data` of the model rows' pixels (reflection included).
        """

    def rows(self, staged: Any) -> Array:
        """`(C_in, len(iy), len(ix))` float32 model input, normalized, 0 where invalid."""

    def zeros(self, shape: tuple[int, ...]) -> Array:
        """float32 zeros where the loop's arrays live."""

    def array(self, values: np.ndarray) -> Array:
        """A host array moved to where the loop's arrays live."""

    def host(self, values: Array) -> np.ndarray:
        """A loop array back on the host (a view where it already is there)."""

    def stack(self, parts: list[Array]) -> Array:
        """Stack equal-shaped arrays along a new first axis."""

    def __call__(self, batch: Array) -> Array:
        """The model: `(N, C_in, h, w)` → `(N, C_out, h, w)` float32, normalized."""


def _whole(index: np.ndarray, size: int) -> bool:
    """`index` is 0, 1, …, size - 1: taking it is the identity."""
    return len(index) == size and int(index[0]) == 0 and bool((np.diff(index) == 1).all())


@dataclass(frozen=True)
class NumpyWindows:
    """The strip loop in numpy around a `WindowModel` (numpy batches in and out)."""

    model: WindowModel
    stats: BandStats

    def stage(self, data: np.ndarray, valid: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> Any:
        x = prepare_window(data, valid, self.stats)
        # inside the scene the read is the windows' pixels already; mirrored at an edge,
        # the runs of scene pixels in order are copied as slices
        if not _whole(iy, x.shape[1]):
            x = take_runs(x, iy, 1)
        if not _whole(ix, x.shape[2]):
            x = take_runs(x, ix, 2)
        return x

    def rows(self, staged: Any) -> Array:
        return staged

    def zeros(self, shape: tuple[int, ...]) -> Array:
        return np.zeros(shape, np.float32)

    def array(self, values: np.ndarray) -> Array:
        return values

    def host(self, values: Array) -> np.ndarray:
        return np.asarray(values)

    def stack(self, parts: list[Array]) -> Array:
        return np.stack(parts)

    def __call__(self, batch: Array) -> Array:
        return self.model(batch)


class TorchWindows:
    """The strip loop in torch tensors on the model's device around a `TensorModel`.

    Args:
        model: Runs device batches (a `Translator`, or its `DihedralMean`).
        device: Where the model and the loop's arrays live.
        stats: Source statistics, for normalization.
    """

    def __init__(self, model: TensorModel, device: torch.device, stats: BandStats) -> None:
        self.model, self.device, self.stats = model, device, stats
        self.pin = device.type == "cuda"

    def stage(self, data: np.ndarray, valid: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> Any:
        import torch

        parts = [torch.from_numpy(np.ascontiguousarray(a)) for a in (data, valid, iy, ix)]
        # pinned host memory (copied here, off the model's thread) lets the upload run async
        return [p.pin_memory() for p in parts] if self.pin else parts

    def rows(self, staged: Any) -> Array:
        data, valid, iy, ix = (t.to(self.device, non_blocking=True) for t in staged)
        x = normalize(data, self.stats, band_axis=0)
        x.masked_fill_(~valid, 0)
        return x[:, iy[:, None], ix]

    def zeros(self, shape: tuple[int, ...]) -> Array:
        import torch

        return torch.zeros(shape, dtype=torch.float32, device=self.device)

    def array(self, values: np.ndarray) -> Array:
        import torch

        return torch.from_numpy(np.ascontiguousarray(values)).to(self.device)

    def host(self, values: Array) -> np.ndarray:
        if isinstance(values, np.ndarray):  # the carry's validity masks stay on the host
            return values
        return np.asarray(values.detach().cpu().numpy())

    def stack(self, parts: list[Array]) -> Array:
        import torch

        return torch.stack(parts)

    def __call__(self, batch: Array) -> Array:
        return self.model.run(batch)
