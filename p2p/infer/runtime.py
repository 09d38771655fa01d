"""The runtime a prediction asks for (`PredictConfig.runtime`, ``device``, ``tta``), opened.

- ``torch``: the bundle's generator (`p2p.infer.translator`); on a `TENSOR_DEVICES` device the
  strip loop's arrays live there too (`TorchWindows`).
- ``onnx``: its ``model.onnx`` on onnxruntime (`p2p.infer.onnxrun`), test-time augmentation
  in numpy (`p2p.infer.tta`): torch is never imported, nor the weights loaded.

Importing this module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from p2p.bands.normalization import BandStats
from p2p.core.errors import BundleError, ConfigError
from p2p.infer.backends import NumpyWindows, TensorModel, TorchWindows, Windows
from p2p.infer.tta import DihedralMean

if TYPE_CHECKING:
    import torch

    from p2p.core.config import PredictConfig
    from p2p.infer.backends import WindowModel
    from p2p.model.bundle import Bundle
    from p2p.model.meta import BundleRef

#: Device types on which the strip loop keeps windows, symmetries and blend sums as torch
#: tensors (`TorchWindows`); elsewhere numpy is faster. Tests add "cpu" to run that path here.
TENSOR_DEVICES = ("cuda",)


def loaded(bundle: BundleRef) -> Bundle:
    """`bundle` with its generator: as it is when loaded already, else loaded (on the CPU).

    Raises:
        BundleError: as `load_bundle`, or the weights are no longer those `bundle` was read
            with (its checksum keys the prediction).
    """
    from p2p.model.bundle import Bundle, load_bundle

    if isinstance(bundle, Bundle):
        return bundle
    weights = load_bundle(bundle.path)
    if weights.weights_hash != bundle.weights_hash:
        raise BundleError(bundle.path, "its weights changed while predicting; run it again")
    return weights


def open_translator(bundle: BundleRef, config: PredictConfig) -> WindowModel:
    """The bundle's model on the runtime and device `config` asks for (averaged over the
    square's symmetries with ``config.tta``); the torch runtime loads the weights of a bundle
    given as a `BundleRef`.

    Raises:
        ConfigError: The device is absent.
        BundleError: ``runtime: onnx`` and the bundle has no valid ``model.onnx``.
    """
    if config.runtime == "onnx":
        from p2p.infer.onnxrun import OnnxTranslator, onnx_model

        model: WindowModel = OnnxTranslator(onnx_model(bundle), config.device)
        return DihedralMean(model, config.uncertainty) if config.tta else model
    from p2p.infer.translator import pick_device

    return _torch_model(bundle, pick_device(config.device), config)


def _torch_model(bundle: BundleRef, device: torch.device, config: PredictConfig) -> WindowModel:
    """The bundle's generator on `device` (its weights loaded if `bundle` is a ref), averaged
    over the symmetries (with ``tta``), with the spread across them or, with ``samples``,
    across dropout-on samples of each symmetry."""
    from p2p.infer.translator import Translator

    bundle = loaded(bundle)
    model = Translator(bundle.generator, device)
    if not config.tta:
        return model
    if not (config.uncertainty and config.samples):
        return DihedralMean(model, config.uncertainty)
    from p2p.infer.sampling import sampling_generator

    sampler = Translator(sampling_generator(bundle.generator), model.device)
    return DihedralMean(model, True, sampler, config.samples)


def open_windows(bundle: BundleRef, config: PredictConfig) -> Windows:
    """The strip loop's model and arrays for `config`: on a `TENSOR_DEVICES` device with the
    torch runtime, tensors on that device; otherwise numpy around `open_translator`.

    Raises:
        ConfigError, BundleError: as `open_translator`.
    """
    stats = BandStats.from_dict(bundle.meta.source_stats)
    if config.runtime == "torch":
        from p2p.infer.translator import pick_device

        device = pick_device(config.device)
        if device.type in TENSOR_DEVICES:
            tensors = _torch_model(bundle, device, config)
            assert isinstance(tensors, TensorModel)
            return TorchWindows(tensors, device, stats)
    return NumpyWindows(open_translator(bundle, config), stats)


def check_runtime(bundle: BundleRef, config: PredictConfig) -> None:
    """Raise what `open_translator` would raise, without loading a session or the weights."""
    model = bundle.meta.model
    if config.samples:
        from p2p.model.networks.unet import DROPOUT_LEVEL, has_dropout

        if not has_dropout(model.num_downs, model.dropout):
            raise ConfigError(
                "predict.samples",
                f"the model has no dropout layer (dropout {model.dropout}, num_downs "
                f"{model.num_downs}; U-Nets of num_downs >= {DROPOUT_LEVEL + 2} have them), "
                "so its samples would all be the same; leave samples at 0",
            )
    if config.runtime == "onnx":
        from p2p.infer.onnxrun import onnx_model, onnx_providers

        onnx_model(bundle)
        onnx_providers(config.device)
    else:
        from p2p.infer.translator import pick_device

        pick_device(config.device)
