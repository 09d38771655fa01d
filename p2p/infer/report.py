"""Human-readable reports: metrics tables in Markdown and input | prediction | target pictures."""

from __future__ import annotations

import base64
import filecmp
import io
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray

from p2p.core import storage, transfer
from p2p.core.errors import P2PError
from p2p.core.fsutil import atomic_path

METRICS = ("mae", "rmse", "psnr", "ssim")
#: Longest side of a picture embedded in a Markdown artifact, in pixels.
MAX_EMBED_SIDE = 512
#: ... and of a chip preview (four panels of 256 px and their gaps).
PREVIEW_EMBED_SIDE = 1040


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def metrics_markdown(metrics: dict[str, Any], band_names: Sequence[str] | None = None) -> str:
    """A Markdown table of `MetricAccumulator.compute()` output: one row per band + overall.

    MAE and RMSE are in target units, PSNR in dB, SSIM in [-1, 1].
    """
    if not metrics or "bands" not in metrics:
        return "_no metrics (no validation chips)_"
    lines = ["| band | MAE | RMSE | PSNR (dB) | SSIM |", "|---|---|---|---|---|"]
    for i, band in enumerate(metrics["bands"]):
        name = band.get("name") or (
            band_names[i] if band_names and i < len(band_names) else f"band {i + 1}"
        )
        lines.append(f"| {name} | " + " | ".join(_fmt(band.get(m)) for m in METRICS) + " |")
    overall = metrics.get("overall", {})
    lines.append("| **overall** | " + " | ".join(_fmt(overall.get(m)) for m in METRICS) + " |")
    return "\n".join(lines)


def skill_line(metrics: dict[str, Any]) -> str:
    """One line: the model's MAE beside the baselines' on the same pixels, and the ratio."""
    base = metrics.get("baselines") or {}
    mean = (base.get("mean") or {}).get("mae")
    linear = (base.get("linear") or {}).get("mae")
    model = metrics.get("overall", {}).get("mae")
    ratio = metrics.get("skill")
    verdict = ""
    if ratio is not None:
        verdict = " (beats the linear baseline)" if ratio < 1 else " — NO BETTER THAN LINEAR"
    return (
        f"MAE on the same pixels: model {_fmt(model)}, linear regression {_fmt(linear)}, "
        f"constant mean {_fmt(mean)}; model / linear = {_fmt(ratio)}{verdict}"
    )


def skill_markdown(metrics: dict[str, Any]) -> str:
    """A Markdown table of the model against the baselines, flagged when linear wins."""
    base = metrics.get("baselines") or {}
    if not base:
        return "_no baselines (no validation chips)_"
    ratio = metrics.get("skill")
    rows = [
        "| predictor | MAE (target units) | / linear |",
        "|---|---|---|",
        f"| **p2p model** | {_fmt(metrics.get('overall', {}).get('mae'))} | {_fmt(ratio)} |",
    ]
    linear = (base.get("linear") or {}).get("mae")
    for name, label in (("linear", "per-pixel linear regression"), ("mean", "constant mean")):
        mae = (base.get(name) or {}).get("mae")
        rel = mae / linear if mae is not None and linear else None
        rows.append(f"| {label} | {_fmt(mae)} | {_fmt(rel)} |")
    text = "\n".join(rows)
    if ratio is not None and ratio >= 1:
        text = (
            "> **Warning:** the model is no better than a per-pixel linear regression of the "
            "source bands on these pixels.\n\n" + text
        )
    return text


def embedded_png(
    path: str | Path, title: str, max_side: int = MAX_EMBED_SIDE, nearest: bool = False
) -> str:
    """A PNG as a Markdown image with a ``data:`` URI, so the Prefect UI shows it wherever the
    worker's disk is. Larger pictures are shrunk to `max_side` pixels (a few 100 kB at most),
    with nearest neighbour when `nearest` (chip previews: pixels stay sharp)."""
    from PIL import Image  # the pictures only: `p2p predict` delivers files without it

    with Image.open(path) as img:
        picture = img.convert("RGB")
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
    picture.thumbnail((max_side, max_side), resample)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"![{title}](data:image/png;base64,{data})"


DATA_RANGE_NOTE = (
    "MAE and RMSE in target units; PSNR and SSIM with each band's data range = the span of "
    "the training target (0.5th to 99.5th percentile), the same in training, the evaluate "
    "stage and `p2p evaluate --model`."
)


def _picture(path: str | None, title: str) -> str:
    """A chip preview, embedded at up to `PREVIEW_EMBED_SIDE` px (4 chips of >= 256 px)."""
    if not path or not Path(path).is_file():
        return "_no picture_"
    return embedded_png(path, title, PREVIEW_EMBED_SIDE, nearest=True)


def _band_caption(model: str | None, panels: str) -> str:
    """`panels` with the bands each shows, by the bundle's names: ``source (B4, B3, B2) |
    ...``; as given when the bundle cannot be read."""
    from p2p.model.meta import read_meta

    try:
        meta = read_meta(model)[0] if model else None
    except (P2PError, OSError):  # a report must not fail for its caption
        meta = None
    if meta is None:
        return panels
    source, target = ", ".join(meta.source_bands[:3]), ", ".join(meta.target_bands[:3])
    return panels.replace("source", f"source ({source})").replace("target", f"target ({target})")


def _target_names(model: str | None) -> list[str] | None:
    from p2p.model.meta import read_meta

    try:
        return list(read_meta(model)[0].target_bands) if model else None
    except (P2PError, OSError):  # a report must not fail for its band names
        return None


def train_report(summary: dict[str, Any]) -> str:
    """The train stage's Markdown report: skill against the baselines, metrics, preview."""
    kept = summary.get("kept_epoch")
    caption = _band_caption(summary.get("model"), "source | generated | target | error")
    names = _target_names(summary.get("model"))
    return (
        f"# Training\n\nBundle: `{summary['model']}`  \nEpochs: {summary['epochs']}, "
        f"bundled: epoch {kept}\n\n"
        f"## Against the baselines (validation chips)\n\n{skill_markdown(summary['metrics'])}\n\n"
        f"## Validation metrics\n\n{metrics_markdown(summary['metrics'], names)}\n\n"
        f"{DATA_RANGE_NOTE}\n\n## Last preview: {caption}\n\n"
        f"{_picture(summary.get('preview'), 'preview')}\n"
    )


def seams_markdown(seams: dict[str, Any] | None) -> str:
    """The seam score (`p2p.infer.seams`) in a sentence and a per-band table."""
    if not seams:
        return "_no seam score: the prediction carries no window layout_"
    lay = seams["layout"]
    lines = [
        f"Window boundaries: seam score {_fmt3(seams['seam'])} (1 = boundaries look like the "
        f"interior; above 1 = visible seams), over {seams['pairs']['boundary']} boundary and "
        f"{seams['pairs']['interior']} interior pixel pairs; windows every "
        f"{lay['stride'][1]} px, overlap {lay['overlap'][1]}, {lay['blend']} blending.",
        "",
        "| band | seam | prediction boundary / interior | target boundary / interior |",
        "|---|---|---|---|",
    ]
    for band in seams["bands"]:
        cells = (band["seam"], band["prediction_ratio"], band["target_ratio"])
        lines.append(f"| {band['name']} | " + " | ".join(_fmt3(c) for c in cells) + " |")
    return "\n".join(lines)


def spectral_markdown(spectral: dict[str, Any] | None) -> str:
    """Spectral angle and index fidelity (`p2p.infer.spectral`); empty for one band without
    indices."""
    if not spectral:
        return ""
    parts = []
    sam = spectral.get("sam")
    if sam and sam.get("pixels"):
        parts.append(
            f"Spectral angle (SAM) between predicted and reference spectra: mean "
            f"{_fmt3(sam['mean'])}°, 95th percentile {_fmt3(sam['p95'])}° over "
            f"{sam['pixels']} pixels."
        )
    indices = spectral.get("indices") or []
    if indices:
        rows = ["| index (a − b)/(a + b) | bands a, b | MAE | linear baseline MAE | pixels |",
                "|---|---|---|---|---|"]  # fmt: skip
        for ix in indices:
            a, b = ix["bands"]
            rows.append(
                f"| {ix['name']} | {a}, {b} | {_fmt(ix['mae'])} | {_fmt(ix['linear_mae'])} | "
                f"{ix['pixels']} |"
            )
        parts.append("\n".join(rows))
    return "\n\n".join(parts)


def fidelity_lines(record: dict[str, Any]) -> list[str]:
    """Plain-text lines of `p2p evaluate`: the seam score, SAM and indices, when present."""
    lines = []
    seams = record.get("seams")
    if seams:
        per_band = ", ".join(f"{b['name']} {_fmt3(b['seam'])}" for b in seams["bands"])
        lines.append(f"seam score: {_fmt3(seams['seam'])} ({per_band}; 1 = no visible seam)")
    else:
        lines.append("seam score: - (the prediction carries no window layout)")
    spectral = record.get("spectral") or {}
    sam = spectral.get("sam")
    if sam and sam.get("pixels"):
        lines.append(f"spectral angle: mean {_fmt3(sam['mean'])} deg, p95 {_fmt3(sam['p95'])} deg")
    for ix in spectral.get("indices") or []:
        linear = (
            f", linear baseline {_fmt(ix['linear_mae'])}" if ix["linear_mae"] is not None else ""
        )
        lines.append(f"{ix['name']} MAE: {_fmt(ix['mae'])}{linear} ({ix['pixels']} pixels)")
    return lines


def uncertainty_lines(record: dict[str, Any]) -> list[str]:
    """Plain-text lines of `p2p evaluate --uncertainty`: per band, the rank correlation of the
    uncertainty with the absolute error and the error of its most and least uncertain deciles."""
    scored = record.get("uncertainty")
    if not scored:
        return []
    lines = []
    for b in scored["bands"]:
        lines.append(
            f"uncertainty {b['name']}: spearman {_fmt3(b['spearman'])} with |error|, MAE "
            f"{_fmt(b['mae_most_uncertain'])} in the most / {_fmt(b['mae_least_uncertain'])} in "
            f"the least uncertain decile ({b['sampled']} of {b['pixels']} pixels)"
        )
    return lines


def _fmt3(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


def seamless_markdown(seamless: dict[str, Any] | None) -> str:
    """The validation blocks as `p2p predict` translates them: skill and metrics tables."""
    title = "## Validation blocks through the prediction engine\n\n"
    if not seamless:
        return title + "_no tiled scene with validation chips_"
    w = seamless["window"]
    how = (
        f"The validation chips' footprints ({seamless['pixels']} pixels of "
        f"{', '.join(seamless['scenes'])}) predicted as `p2p predict` does: windows of "
        f"{w['tile_size']} px, overlap {w['overlap']}, {w['blend']} blending"
        f"{', test-time augmentation' if w.get('tta') else ''}, values in the target dtype."
    )
    fidelity = "\n\n".join(
        t
        for t in (
            seams_markdown(seamless.get("seams")),
            spectral_markdown(seamless.get("spectral")),
        )
        if t
    )
    return (
        f"{title}{how}\n\n{skill_markdown(seamless)}\n\n{metrics_markdown(seamless)}\n\n{fidelity}"
    )


def evaluate_report(summary: dict[str, Any], model: str) -> str:
    """The evaluate stage's Markdown report: skill against the baselines, metrics, picture."""
    metrics = summary["metrics"]
    return (
        f"# Evaluation on the validation split\n\nModel: `{model}`  \n"
        f"Chips: {summary['n_chips']}\n\n"
        f"## Against the baselines (same pixels)\n\n{skill_markdown(metrics)}\n\n"
        f"## Metrics\n\n{metrics_markdown(metrics, summary.get('bands'))}\n\n"
        f"{DATA_RANGE_NOTE}\n\n{seamless_markdown(metrics.get('seamless'))}\n\n"
        f"## Validation chips: {_band_caption(model, 'source | prediction | target | error')}"
        "\n\n"
        f"{_picture(summary.get('picture'), 'validation chips')}\n"
    )


def to_display(data: NDArray[Any], nodata: float | None = None) -> NDArray[np.uint8]:
    """(C, H, W) raster → (H, W, 3) uint8 for a picture: uint8 as is, other types stretched
    between their 2nd and 98th percentiles; one band is shown as grey, bands past 3 dropped."""
    data = data[:3] if data.shape[0] >= 3 else np.repeat(data[:1], 3, axis=0)
    if data.dtype == np.uint8:
        return np.ascontiguousarray(data.transpose(1, 2, 0))
    valid = np.ones(data.shape[1:], bool) if nodata is None else (data != nodata).all(0)
    values = data[:, valid].astype(np.float64)
    low, high = np.percentile(values, [2, 98]) if values.size else (0.0, 1.0)
    scaled = (data.astype(np.float64) - low) / max(high - low, 1e-9) * 255
    return np.clip(scaled, 0, 255).astype(np.uint8).transpose(1, 2, 0)


def read_display(path: str | Path) -> NDArray[np.uint8]:
    """A raster file as an (H, W, 3) uint8 picture."""
    with rasterio.open(path) as src:
        return to_display(src.read(), src.nodata)


def comparison_png(
    path: str | Path, panels: Sequence[tuple[str, NDArray[np.uint8]]], gap: int = 8
) -> None:
    """Write titled (H, W, 3) panels side by side as one PNG, atomically."""
    height = max(p.shape[0] for _, p in panels)
    width = sum(p.shape[1] for _, p in panels) + gap * (len(panels) - 1)
    header = 22
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (width, height + header), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for title, panel in panels:
        canvas.paste(Image.fromarray(panel), (x, header))
        draw.text((x + 4, 5), title, fill="black")
        x += panel.shape[1] + gap
    with atomic_path(path, ".png") as tmp:
        canvas.save(tmp, format="PNG")


def deliver_file(source: str | Path, output: str | Path) -> bool:
    """Copy `source` to `output` atomically, unless `output` already holds the same bytes.

    An ``s3://`` output is uploaded whole, carrying the file's sha256 as object metadata so an
    unchanged mosaic is not uploaded again.

    Returns:
        True when `output` was written.
    """
    if storage.is_remote(source):  # a stage folder in a bucket workspace
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp, storage.name(source))
            transfer.download(str(source), local)
            return deliver_file(local, output)
    if storage.is_remote(output):
        return transfer.upload_if_changed(Path(source), str(output))
    output = Path(output)
    if output.is_file() and filecmp.cmp(source, output, shallow=False):
        return False
    with atomic_path(output, output.suffix) as tmp:
        shutil.copyfile(source, tmp)
    return True
