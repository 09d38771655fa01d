"""Typed prediction configuration: windowed inference (`PredictConfig`), what evaluation
scores beyond the standard metrics (`EvaluateConfig`) and the mosaic's grid (`MosaicConfig`).
`p2p.core.config` gathers them with the other stages' models.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from p2p.core.scenes import MAX_SIDE, FrozenConfig


class PredictConfig(FrozenConfig):
    """Windowed inference settings (stage `predict`)."""

    tile_size: int | None = Field(
        default=None,
        gt=0,
        le=4096,
        description="Model window side in pixels (at most 4096: a batch of larger windows "
        "outgrows any GPU's memory); None uses the bundle's training chip size (the size the "
        "model saw in training).",
    )
    overlap: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SIDE,
        description="Overlap on each side of a window; None uses an eighth of the window.",
    )
    batch_size: int = Field(default=8, gt=0, le=1024, description="Windows per forward pass.")
    blend: Literal["cosine", "linear", "none"] = Field(
        default="cosine", description="Weight window used to blend overlapping windows."
    )
    output_format: Literal["gtiff", "cog"] = Field(
        default="cog", description="Tiled GeoTIFF, or a Cloud Optimized GeoTIFF with overviews."
    )
    compress: Literal["deflate", "zstd", "lzw", "none"] = Field(
        default="deflate",
        description="Codec of the predictions and the mosaic, with the predictor that pays "
        "(2 for integers, 3 for floats), encoded on the thread budget's cores. deflate: "
        "read everywhere; see docs/measurements.md (Output codec) for size and speed.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto picks CUDA when present."
    )
    runtime: Literal["torch", "onnx"] = Field(
        default="torch",
        description="torch, or onnxruntime on the bundle's model.onnx (made by `p2p export`).",
    )
    nodata: float | None = Field(
        default=None, description="Source nodata overriding the files' (and the bundle's) value."
    )
    tta: bool = Field(
        default=True,
        description="Test-time augmentation: each window is predicted in the 8 flips and "
        "quarter turns that training augments with, and the 8 outputs (turned back) are "
        "averaged; 8x the model's compute. On by default: it lowered the unseen-pixel MAE on "
        "every case of benchmarks/quality.py; false for 8x fewer forward passes.",
    )
    uncertainty: bool = Field(
        default=False,
        description="Also write the per-pixel spread of the 8 test-time symmetries (their "
        "standard deviation in target units, blended across windows like the prediction) as a "
        "float32 raster beside the output, NAME.uncertainty.tif; needs tta.",
    )
    samples: int = Field(
        default=0,
        ge=0,
        le=64,
        description="With uncertainty: the spread across N dropout-on samples of each of the 8 "
        "symmetries instead (8N more forward passes; reproducible per window). Needs a model "
        "with dropout (num_downs >= 6) and runtime torch; the prediction is unchanged.",
    )

    @model_validator(mode="after")
    def _overlap_fits(self) -> PredictConfig:
        if self.tile_size is not None and self.overlap is not None:
            self.window(self.tile_size)
        if self.uncertainty and not self.tta:
            raise ValueError("uncertainty needs tta: it is the spread across the symmetries")
        if self.samples and not self.uncertainty:
            raise ValueError("samples needs uncertainty: they make the uncertainty raster")
        if self.samples and self.runtime != "torch":
            raise ValueError("samples needs runtime torch: an ONNX graph has no dropout to turn on")
        return self

    def window(self, chip_size: int) -> tuple[int, int]:
        """(tile_size, overlap) in pixels, with a model trained on `chip_size` chips.

        Raises:
            ValueError: The overlap is not less than half the window.
        """
        tile = self.tile_size if self.tile_size is not None else chip_size
        overlap = self.overlap if self.overlap is not None else tile // 8
        if 2 * overlap >= tile:
            raise ValueError(f"overlap {overlap} must be less than half of tile_size {tile}")
        return tile, overlap


class EvaluateConfig(FrozenConfig):
    """What the evaluate stage scores beyond MAE, RMSE, PSNR, SSIM, seams and SAM."""

    indices: list[str] = Field(
        default_factory=list,
        description="Normalized differences (a - b)/(a + b) of two target bands to score on "
        "the validation blocks, NAME=A,B with band names or 1-based numbers, e.g. "
        "['ndvi=nir,red']; each reports its MAE beside the linear baseline's.",
    )

    @field_validator("indices")
    @classmethod
    def _index_form(cls, value: list[str]) -> list[str]:
        for text in value:
            name, sep, bands = text.partition("=")
            if not sep or not name.strip() or len([b for b in bands.split(",") if b.strip()]) != 2:
                raise ValueError(f"{text!r} is not NAME=A,B (e.g. ndvi=nir,red or ndvi=4,3)")
        return value


class MosaicConfig(FrozenConfig):
    """How several predicted scenes are put on one grid."""

    crs: str | None = Field(
        default=None, description="Output CRS (e.g. EPSG:32633); the first scene's by default."
    )
    resolution: float | None = Field(
        default=None, gt=0, description="Output pixel size in CRS units; the first scene's."
    )
