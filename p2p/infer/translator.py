"""Running a generator on batches of normalized windows: torch or onnxruntime, CPU or GPU.

The windowed engine (`p2p.infer.inference`) sees a `WindowModel`, a function of window batches; the
runtime behind it is a setting (`PredictConfig.runtime`), not a second engine. `Translator`
runs the bundle's torch generator; `OnnxTranslator` runs its ``model.onnx`` (`p2p export`).
Needs only torch and numpy (onnxruntime only for the ONNX runtime, imported when used).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

from p2p.bands.normalization import BandStats
from p2p.core.errors import ConfigError
from p2p.infer.backends import NumpyWindows, TorchWindows, Windows
from p2p.infer.cpuforward import WindowParallel, intra_op_budget
from p2p.model.networks.unet import DROPOUT_LEVEL, has_dropout
from p2p.model.pix2pix import select_device

if TYPE_CHECKING:
    from p2p.core.config import PredictConfig
    from p2p.model.bundle import Bundle
    from p2p.model.meta import BundleRef


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


def pick_device(name: str) -> torch.device:
    """Resolve ``auto``/``cpu``/``cuda`` for prediction (auto: CUDA when present)."""
    return select_device(name, field="predict.device")


class Translator:
    """The generator as a function of normalized window batches.

    On CUDA it runs with channels_last and autocast (bf16 where supported, else fp16).

    Args:
        generator: Module mapping `(N, C_in, h, w)` in [-1, 1] to `(N, C_out, h, w)`.
        device: Where it runs; the module is moved there and put in eval mode.
        fast: channels_last + autocast; None: on CUDA only. True on CPU (bf16 autocast) runs
            the GPU's code path there, for tests.
    """

    def __init__(
        self, generator: torch.nn.Module, device: torch.device, fast: bool | None = None
    ) -> None:
        self.device = device
        self.module = generator
        self.cuda = device.type == "cuda"
        self.fast = self.cuda if fast is None else fast
        self.generator = generator.to(device).eval()
        if self.fast:
            self.generator = self.generator.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        bf16 = not self.cuda or torch.cuda.is_bf16_supported()
        self.amp_dtype = torch.bfloat16 if bf16 else torch.float16
        #: On CPU (without the GPU's code path) the batch runs on one intra-op thread, in
        #: parts side by side, so pixels do not depend on the thread count (`cpuforward`).
        self.parallel = (
            None
            if self.fast or device.type != "cpu"
            else WindowParallel(self.generator, intra_op_budget())
        )

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        """`(N, C_in, h, w)` float32 normalized on `device` → `(N, C_out, h, w)` float32
        normalized, there (no grad, ordinary tensors: the strip loop adds into them)."""
        if self.parallel is not None:
            return self.parallel(x).float()
        if self.fast:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.fast):
            y: torch.Tensor = self.generator(x)
        return y.float()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """`(N, C_in, h, w)` float32 normalized → `(N, C_out, h, w)` float32 normalized."""
        return np.ascontiguousarray(self.run(to_device(batch, self.device)).cpu().numpy())


def to_device(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host batch on `device` (through pinned memory on CUDA, so the copy runs async)."""
    x = torch.from_numpy(batch)
    return x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(
            "predict.runtime", "onnx needs onnxruntime: pip install 'p2p[onnx]'"
        ) from None
    return onnxruntime


def onnx_providers(device: str) -> list[str]:
    """onnxruntime execution providers for ``auto``/``cpu``/``cuda``, best first.

    Raises:
        ConfigError: onnxruntime is not installed, or ``cuda`` was asked for and it has no
            CUDA provider.
    """
    ort = _onnxruntime()
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise ConfigError(
            "predict.device",
            "cuda was asked for but onnxruntime has no CUDA provider (install onnxruntime-gpu)",
        )
    cuda = ["CUDAExecutionProvider"] if has_cuda and device != "cpu" else []
    return [*cuda, "CPUExecutionProvider"]


class OnnxTranslator:
    """An exported generator (``model.onnx``) run by onnxruntime, fp32 on every provider.

    Args:
        path: The ONNX file (`p2p.infer.onnxbundle.onnx_model` checks it belongs to the bundle).
        device: ``auto`` (CUDA provider when present), ``cpu`` or ``cuda``.
    """

    def __init__(self, path: Path, device: str) -> None:
        ort = _onnxruntime()
        options = ort.SessionOptions()
        # the thread budget's count (the torch path's), not onnxruntime's default (every
        # physical core, which oversubscribes a Dask worker's task slots); pixels do not
        # depend on the count (tests/test_onnx.py). Idle workers would spin after each run
        # by default, on the cores the strip loop's reader and writer decode and encode on.
        options.intra_op_num_threads = intra_op_budget()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=onnx_providers(device))
        self.input = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """`(N, C_in, h, w)` float32 normalized → `(N, C_out, h, w)` float32 normalized."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        (y,) = self.session.run(None, {self.input: x})
        return np.asarray(y, dtype=np.float32)


class DihedralMean:
    """Test-time augmentation: a model averaged over the 8 symmetries of the square.

    Each batch is run once per symmetry (`p2p.bands.augment.dihedral`, the training
    augmentation's), each output is turned back (`undo_dihedral`) and the 8 are summed in
    order and divided by 8. Around a `TensorModel` the batch is turned on the model's device
    (8 forwards of the batch, no host copy in between; `run` keeps it there); around another
    runtime (ONNX) each symmetry goes through numpy. Windows must be square (they are:
    `tile_size` on both axes).

    Args:
        model: The model run per symmetry.
        spread: Also return the 8 outputs' population standard deviation, as `C_out` more
            channels after the mean (the mean's values do not change).
    """

    def __init__(
        self,
        model: WindowModel,
        spread: bool = False,
        sampler: Translator | None = None,
        samples: int = 0,
    ) -> None:
        self.model, self.spread = model, spread
        self.sampler, self.samples = sampler, samples
        if isinstance(model, TensorModel):  # then this is a TensorModel too
            self.device = model.device

    def _sampled_spread(self, x: torch.Tensor, samples: int) -> torch.Tensor:
        """Standard deviation across the 8 symmetries x `samples` dropout-on samples of each
        window (`p2p.infer.sampling`), accumulated one output at a time (Welford)."""
        from p2p.bands.augment import dihedral, undo_dihedral
        from p2p.infer.sampling import SampledGenerator

        assert self.sampler is not None
        module = self.sampler.module
        assert isinstance(module, SampledGenerator)
        mean: torch.Tensor | None = None
        m2: torch.Tensor | None = None
        n = 0
        for sample in range(samples):
            module.sample = sample
            for k in range(8):
                y = undo_dihedral(self.sampler.run(dihedral(x, k).contiguous()), k)
                n += 1
                if mean is None or m2 is None:
                    mean, m2 = y.clone(), torch.zeros_like(y)
                    continue
                delta = y - mean
                mean += delta / n
                m2 += delta * (y - mean)
        assert m2 is not None
        return (m2 / n).sqrt()

    def _combine(self, turned_back: Iterator[torch.Tensor], spread: bool) -> torch.Tensor:
        """Mean (and with `spread`, the spread) of the 8 outputs, turned back:
        `(N, C_out or 2·C_out, s, s)`."""
        outputs = list(turned_back) if spread else []
        total: torch.Tensor | None = None
        for y in outputs or turned_back:
            total = y if total is None else total + y
        assert total is not None
        mean = total / 8
        if not spread:
            return mean
        var = sum(((y - mean) ** 2 for y in outputs), torch.zeros_like(mean)) / 8
        return torch.cat([mean, var.sqrt()], dim=1)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """`(N, C_in, s, s)` float32 normalized on the device → `(N, C_out, s, s)` there
        (`2·C_out` with `spread`)."""
        from p2p.bands.augment import dihedral, undo_dihedral

        assert isinstance(self.model, TensorModel)
        model = self.model
        sampled = self.spread and self.sampler is not None and self.samples > 0
        out = self._combine(
            (undo_dihedral(model.run(dihedral(x, k).contiguous()), k) for k in range(8)),
            self.spread and not sampled,  # the sampled spread replaces the symmetries'
        )
        if sampled:
            return torch.cat([out, self._sampled_spread(x, self.samples)], dim=1)
        return out

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """`(N, C_in, s, s)` float32 normalized → `(N, C_out, s, s)` float32 normalized
        (`2·C_out` with `spread`)."""
        if isinstance(self.model, TensorModel):
            y = self.run(to_device(batch, self.model.device))
            return np.ascontiguousarray(y.cpu().numpy(), dtype=np.float32)
        from p2p.bands.augment import dihedral, undo_dihedral

        x, model = torch.from_numpy(batch), self.model
        total = self._combine(
            (
                undo_dihedral(
                    torch.from_numpy(model(np.ascontiguousarray(dihedral(x, k).numpy()))), k
                )
                for k in range(8)
            ),
            self.spread,
        )
        return np.ascontiguousarray(total.numpy(), dtype=np.float32)


def open_translator(bundle: Bundle, config: PredictConfig) -> WindowModel:
    """The bundle's generator on the runtime and device `config` asks for (averaged over the
    square's symmetries with ``config.tta``).

    Raises:
        ConfigError: The device is absent.
        BundleError: ``runtime: onnx`` and the bundle has no valid ``model.onnx``.
    """
    if config.runtime == "onnx":
        from p2p.infer.onnxbundle import onnx_model

        model: WindowModel = OnnxTranslator(onnx_model(bundle), config.device)
        return DihedralMean(model, config.uncertainty) if config.tta else model
    model = Translator(bundle.generator, pick_device(config.device))
    return _averaged(model, bundle, config)


def _averaged(model: Translator, bundle: Bundle, config: PredictConfig) -> WindowModel:
    """`model` averaged over the symmetries (with ``tta``), with the spread across them or,
    with ``samples``, across dropout-on samples of each symmetry."""
    if not config.tta:
        return model
    if not (config.uncertainty and config.samples):
        return DihedralMean(model, config.uncertainty)
    from p2p.infer.sampling import sampling_generator

    sampler = Translator(sampling_generator(bundle.generator), model.device)
    return DihedralMean(model, True, sampler, config.samples)


#: Device types on which the strip loop keeps windows, symmetries and blend sums as torch
#: tensors (`TorchWindows`); elsewhere numpy is faster. Tests add "cpu" to run that path here.
TENSOR_DEVICES = ("cuda",)


def open_windows(bundle: Bundle, config: PredictConfig) -> Windows:
    """The strip loop's model and arrays for `config`: on a `TENSOR_DEVICES` device with the
    torch runtime, tensors on that device; otherwise numpy around `open_translator`.

    Raises:
        ConfigError, BundleError: as `open_translator`.
    """
    stats = BandStats.from_dict(bundle.meta.source_stats)
    if config.runtime == "torch":
        device = pick_device(config.device)
        if device.type in TENSOR_DEVICES:
            tensors = _averaged(Translator(bundle.generator, device), bundle, config)
            assert isinstance(tensors, TensorModel)
            return TorchWindows(tensors, device, stats)
    return NumpyWindows(open_translator(bundle, config), stats)


def check_runtime(bundle: BundleRef, config: PredictConfig) -> None:
    """Raise what `open_translator` would raise, without loading a session."""
    model = bundle.meta.model
    if config.samples and not has_dropout(model.num_downs, model.dropout):
        raise ConfigError(
            "predict.samples",
            f"the model has no dropout layer (dropout {model.dropout}, num_downs "
            f"{model.num_downs}; U-Nets of num_downs >= {DROPOUT_LEVEL + 2} have them), so "
            "its samples would all be the same; leave samples at 0",
        )
    if config.runtime == "onnx":
        from p2p.infer.onnxbundle import onnx_model

        onnx_model(bundle)
        onnx_providers(config.device)
    else:
        pick_device(config.device)
