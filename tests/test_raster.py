"""Scene reading, band stacking, masks and alignment on real GeoTIFFs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window

from p2p.core.errors import AlignmentError, InputError
from p2p.raster import Grid, SceneReader, open_aligned
from p2p.raster.lazy import open_scene
from tests.rasters import ramp, write_geotiff

UTM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 1000000.0)


def test_band_files_stack_in_order_with_selection(tmp_path: Path) -> None:
    a = ramp(2, 64, 80, "uint16")
    b = ramp(1, 64, 80, "uint16") + 7
    fa = write_geotiff(tmp_path / "a.tif", a, descriptions=["red", "green"])
    fb = write_geotiff(tmp_path / "nir.tif", b)
    with SceneReader([fa, fb]) as r:
        assert (r.count, r.dtype) == (3, "uint16")
        assert r.band_names == ["red", "green", "nir"]
        data, valid = r.read(Window(5, 3, 20, 10))
        np.testing.assert_array_equal(data, np.concatenate([a, b])[:, 3:13, 5:25])
        assert valid.all()
    with SceneReader([fa, fb], bands=[3, 1]) as r:
        data, _ = r.read(Window(0, 0, 80, 64))
        np.testing.assert_array_equal(data, np.stack([b[0], a[0]]))


def test_boundless_window_is_invalid_outside_and_filled(tmp_path: Path) -> None:
    f = write_geotiff(tmp_path / "s.tif", ramp(1, 32, 32, "uint16") + 1, nodata=65535)
    with SceneReader(f) as r:
        data, valid = r.read(Window(-4, 28, 8, 8))
        assert valid[:4, 4:].all() and not valid[4:].any() and not valid[:, :4].any()
        assert (data[0, 4:] == 65535).all()
        assert data[0, 0, 4] == 1 + 28 + 0


def test_nodata_override_masks_fill_borders(tmp_path: Path) -> None:
    arr = ramp(2, 48, 48, "uint16") + 100
    arr[:, :, :6] = 0  # a fill border, nodata left unset in the file
    arr[0, 20, 20] = 0  # one band zero is enough to make the pixel invalid
    f = write_geotiff(tmp_path / "s.tif", arr)
    with SceneReader(f) as r:
        assert r.nodata is None and r.read(Window(0, 0, 48, 48))[1].all()
    with SceneReader(f, nodata=0) as r:
        _, valid = r.read(Window(0, 0, 48, 48))
        assert not valid[:, :6].any() and not valid[20, 20]
        assert valid.sum() == 48 * 42 - 1


def test_internal_mask_and_alpha_are_respected(tmp_path: Path) -> None:
    arr = ramp(3, 32, 32, "uint8")
    alpha = np.full((1, 32, 32), 255, np.uint8)
    alpha[0, :10] = 0
    f = write_geotiff(
        tmp_path / "rgba.tif", np.concatenate([arr, alpha]), photometric="RGB", alpha="YES"
    )
    with SceneReader(f) as r:
        assert r.count == 3
        _, valid = r.read(Window(0, 0, 32, 32))
        assert not valid[:10].any() and valid[10:].all()
    g = write_geotiff(tmp_path / "masked.tif", arr)
    with rasterio.open(g, "r+") as ds:
        mask = np.full((32, 32), 255, np.uint8)
        mask[:, 25:] = 0
        ds.write_mask(mask)
    with SceneReader(g) as r:
        _, valid = r.read(Window(0, 0, 32, 32))
        assert valid[:, :25].all() and not valid[:, 25:].any()


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_dtypes_round_trip(tmp_path: Path, dtype: str) -> None:
    arr = ramp(2, 40, 40, dtype, scale=0.5 if dtype == "float32" else 1) % 200
    arr = arr.astype(dtype)
    with SceneReader(write_geotiff(tmp_path / "s.tif", arr)) as r:
        data, _ = r.read(Window(0, 0, 40, 40))
        assert data.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(data, arr)


def test_float_nan_nodata(tmp_path: Path) -> None:
    arr = np.ones((1, 16, 16), np.float32)
    arr[0, 3, 4] = np.nan
    with SceneReader(write_geotiff(tmp_path / "s.tif", arr, nodata=float("nan"))) as r:
        _, valid = r.read(Window(0, 0, 16, 16))
        assert not valid[3, 4] and valid.sum() == 255


def test_bad_inputs_raise_one_line_errors(tmp_path: Path) -> None:
    a = write_geotiff(tmp_path / "a.tif", ramp(1, 32, 32))
    b = write_geotiff(tmp_path / "b.tif", ramp(1, 32, 32), transform=UTM @ Affine.translation(1, 0))
    with pytest.raises(InputError, match=r"b\.tif: grid .* differs from .*a\.tif"):
        SceneReader([a, b])
    (tmp_path / "notes.tif").write_text("hello")
    with pytest.raises(InputError, match=r"notes\.tif: not a raster GDAL can open"):
        SceneReader(tmp_path / "notes.tif")
    with pytest.raises(InputError, match=r"missing\.tif: file not found"):
        SceneReader(tmp_path / "missing.tif")
    with pytest.raises(InputError, match="band 3 out of range"):
        SceneReader(a, bands=[3])


def test_same_grid_is_not_resampled(tmp_path: Path) -> None:
    arr = ramp(1, 32, 32, "float32")
    f = write_geotiff(tmp_path / "t.tif", arr)
    with SceneReader(f) as src, open_aligned(f, src.grid) as r:
        assert not r.resampled
        np.testing.assert_array_equal(r.read(Window(0, 0, 32, 32))[0], arr)


def _linear_target(tmp_path: Path, crs: str, transform: Affine, shape: tuple[int, int]) -> Path:
    """A float target whose value is linear in its own pixel coordinates: v = col + 2*row."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    value = (cols + 0.5 + 2 * (rows + 0.5)).astype(np.float32)[None]
    return write_geotiff(tmp_path / "target.tif", value, crs=crs, transform=transform, nodata=-1)


@pytest.mark.parametrize(
    ("src_crs", "src_origin", "tgt_crs", "tgt_transform"),
    [
        # A UTM source and a geographic target at another resolution.
        (
            "EPSG:32633",
            (500000.0, 1000000.0),
            "EPSG:4326",
            Affine(3e-5, 0, 14.998, 0, -3e-5, 9.047),
        ),
        # Southern hemisphere: the target in the northern zone has negative northings.
        (
            "EPSG:32733",
            (500000.0, 9990000.0),
            "EPSG:32633",
            Affine(7.0, 0, 499800.0, 0, -7.0, -9800.0),
        ),
    ],
)
def test_target_in_other_crs_and_resolution_is_warped_onto_source_grid(
    tmp_path: Path,
    src_crs: str,
    src_origin: tuple[float, float],
    tgt_crs: str,
    tgt_transform: Affine,
) -> None:
    grid = Grid(
        rasterio.crs.CRS.from_user_input(src_crs),
        Affine(10, 0, src_origin[0], 0, -10, src_origin[1]),
        96,
        96,
    )
    target = _linear_target(tmp_path, tgt_crs, tgt_transform, (300, 300))
    with open_aligned(target, grid, resampling="bilinear") as r:
        assert r.resampled and r.grid == grid
        data, valid = r.read(Window(0, 0, 96, 96))
    for row, col in [(10, 10), (50, 70), (90, 30)]:
        x, y = grid.transform @ (col + 0.5, row + 0.5)
        (tx,), (ty,) = warp_transform(grid.crs, tgt_crs, [x], [y])
        tcol, trow = ~tgt_transform @ (tx, ty)
        assert valid[row, col]
        assert data[0, row, col] == pytest.approx(tcol + 2 * trow, abs=0.5)


def test_partial_overlap_leaves_outside_invalid_and_no_overlap_fails(tmp_path: Path) -> None:
    grid = Grid(rasterio.crs.CRS.from_epsg(32633), UTM, 64, 64)
    half = write_geotiff(
        tmp_path / "half.tif",
        np.full((1, 64, 32), 5, np.uint8),
        transform=UTM @ Affine.translation(32, 0),
    )
    with open_aligned(half, grid, resampling="nearest") as r:
        data, valid = r.read(Window(0, 0, 64, 64))
        assert not valid[:, :32].any() and valid[:, 32:].all() and (data[0, :, 32:] == 5).all()
    far = write_geotiff(
        tmp_path / "far.tif",
        np.ones((1, 8, 8), np.uint8),
        transform=UTM @ Affine.translation(1000, 0),
    )
    with pytest.raises(AlignmentError, match=r"far\.tif: does not overlap"):
        open_aligned(far, grid)


def test_open_scene_is_lazy_block_aligned_and_keeps_metadata(tmp_path: Path) -> None:
    a = ramp(2, 128, 96, "uint16")
    fa = write_geotiff(tmp_path / "a.tif", a, nodata=0, blocksize=32, descriptions=["b", "g"])
    fb = write_geotiff(tmp_path / "c.tif", a[:1] + 5, nodata=0, blocksize=32)
    da = open_scene([fa, fb], bands=[3, 2], chunks=40)
    assert da.chunks is not None and da.chunks[1][0] == 64 and da.chunks[2][0] == 64
    assert da.attrs["nodata"] == 0 and list(da.attrs["long_name"]) == ["c", "g"]
    assert da.rio.crs.to_epsg() == 32633 and da.rio.transform() == UTM
    np.testing.assert_array_equal(da.values, np.stack([a[0] + 5, a[1]]))


@pytest.mark.parametrize(("dtype", "bands"), [("float32", 1), ("uint16", 3)])
def test_warped_file_without_nodata_is_invalid_outside_its_footprint(
    tmp_path: Path, dtype: str, bands: int
) -> None:
    f = write_geotiff(tmp_path / "ref.tif", np.full((bands, 64, 64), 7, dtype))
    # A grid shifted by half a pixel and twice as large: the warp resamples, and pixels outside
    # the file must come back invalid rather than as valid zeros.
    grid = Grid(rasterio.crs.CRS.from_epsg(32633), UTM * Affine.translation(0.5, 0.5), 128, 128)
    with open_aligned([f], grid) as r:
        assert r.resampled
        data, valid = r.read(Window(0, 0, 128, 128))
    assert valid.sum() == (data[0] == 7).sum() > 0
    assert not valid[100:, 100:].any()
