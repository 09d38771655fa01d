"""A procedural world rendered as satellite RGB and as a map (the demo's paired scenes).

One procedural "world" is rendered twice on the same UTM grid: as a satellite image (terrain
shading, textured forest, striped crop parcels, roofs, asphalt, a river and lakes, sensor
noise) and as a map (flat land-cover colours, white streets and yellow main roads with grey
casings, blue water) — the image→map case of the Pix2Pix paper. Scenes are windows of that
world, so overlapping scenes agree pixel for pixel. Plain numpy; no Prefect.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.transform import Affine

from p2p.core.fsutil import atomic_path

F32 = NDArray[np.float32]
CRS = "EPSG:32633"  # UTM zone 33N
PIXEL_M = 2.0
ORIGIN = (500_000.0, 5_800_000.0)  # upper-left corner of the world, metres

# Classes, in painting order (later wins).
MEADOW, FIELD, FOREST, URBAN, BUILDING, WATER, MINOR_ROAD, MAJOR_ROAD = range(8)
MAP_COLOURS = np.array(
    [
        (205, 235, 176),  # meadow
        (238, 240, 213),  # farmland
        (173, 209, 158),  # forest
        (224, 223, 223),  # residential
        (217, 208, 201),  # building
        (170, 211, 223),  # water
        (255, 255, 255),  # street
        (247, 213, 110),  # main road
    ],
    dtype=np.float32,
)
CASING = np.array((180, 172, 165), dtype=np.float32)
CROPS = np.array(
    [(196, 178, 110), (96, 128, 58), (132, 104, 76), (150, 160, 80), (170, 150, 95)],
    dtype=np.float32,
)
ROOFS = np.array([(150, 70, 55), (120, 118, 115), (175, 95, 70), (95, 95, 100)], np.float32)


def value_noise(shape: tuple[int, int], cell: float, rng: np.random.Generator) -> F32:
    """Smooth value noise: random values on a `cell`-pixel lattice, smoothstep-interpolated.

    Returns:
        (H, W) float32 in [0, 1].
    """
    h, w = shape
    gh, gw = int(h / cell) + 2, int(w / cell) + 2
    grid = rng.random((gh, gw), dtype=np.float32)
    y = np.arange(h, dtype=np.float32) / cell
    x = np.arange(w, dtype=np.float32) / cell
    y0, x0 = y.astype(int), x.astype(int)
    ty, tx = y - y0, x - x0
    ty, tx = ty * ty * (3 - 2 * ty), tx * tx * (3 - 2 * tx)
    top = grid[y0][:, x0] * (1 - tx) + grid[y0][:, x0 + 1] * tx
    bottom = grid[y0 + 1][:, x0] * (1 - tx) + grid[y0 + 1][:, x0 + 1] * tx
    out: F32 = (top * (1 - ty[:, None]) + bottom * ty[:, None]).astype(np.float32)
    return out


def fbm(shape: tuple[int, int], cell: float, octaves: int, rng: np.random.Generator) -> F32:
    """Fractal sum of `octaves` value-noise layers (halving cell and amplitude), in [0, 1]."""
    total = np.zeros(shape, np.float32)
    for i in range(octaves):
        total += value_noise(shape, max(cell / 2**i, 1.0), rng) * 0.5**i
    total -= total.min()
    return total / max(float(total.max()), 1e-6)


def _segment_distance(yy: F32, xx: F32, a: tuple[float, float], b: tuple[float, float]) -> F32:
    """Distance in pixels from every (y, x) to the segment a–b."""
    ay, ax = a
    dy, dx = b[0] - ay, b[1] - ax
    t = np.clip(((yy - ay) * dy + (xx - ax) * dx) / max(dy * dy + dx * dx, 1e-6), 0, 1)
    return np.hypot(yy - (ay + t * dy), xx - (ax + t * dx)).astype(np.float32)


def _polyline_distance(yy: F32, xx: F32, points: list[tuple[float, float]]) -> F32:
    dist = np.full(yy.shape, np.inf, np.float32)
    for a, b in itertools.pairwise(points):
        dist = np.minimum(dist, _segment_distance(yy, xx, a, b))
    return dist


def _wandering_line(
    rng: np.random.Generator, h: int, w: int, vertical: bool, n: int = 8
) -> list[tuple[float, float]]:
    """A gently bending road across the world, as (y, x) vertices."""
    span, across = (h, w) if vertical else (w, h)
    pos = across * rng.uniform(0.2, 0.8)
    points = []
    for i in range(n + 1):
        along = -0.1 * span + 1.2 * span * i / n
        pos += rng.normal(0, across * 0.04)
        points.append((along, pos) if vertical else (pos, along))
    return points


@dataclass(frozen=True)
class World:
    """Land-cover classes and the auxiliary fields the renderers need, all (H, W)."""

    classes: NDArray[np.int8]
    elevation: F32
    parcel: NDArray[np.int64]
    casing: NDArray[np.bool_]
    rows: F32


def _streets(yy: F32, xx: F32, rng: np.random.Generator) -> tuple[F32, NDArray[np.int64]]:
    """Distance to a slightly rotated street grid, and the id of each street block."""
    angle = rng.uniform(-0.3, 0.3)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    spacing = 56.0
    du = np.abs((u % spacing) - spacing / 2)
    dv = np.abs((v % spacing) - spacing / 2)
    dist = spacing / 2 - np.maximum(du, dv)
    block = (np.floor(u / spacing) * 7919 + np.floor(v / spacing)).astype(np.int64)
    lots = (np.floor(u / 14) * 104729 + np.floor(v / 14)).astype(np.int64)
    lot_edge = np.minimum(u % 14, v % 14)
    building = (_hash(lots) % 100 < 70) & (lot_edge > 3) & (dist > 6)
    return dist.astype(np.float32), np.where(building, lots, -1 - block)


def _hash(ids: NDArray[np.int64]) -> NDArray[np.int64]:
    """A cheap integer hash, so parcel and roof choices look random but are reproducible."""
    x = (ids * 2654435761) % (2**32)
    return ((x ^ (x >> 13)) * 1274126177) % (2**31)


def make_world(height: int, width: int, seed: int = 0) -> World:
    """Lay out terrain, water, forest, fields, a town and roads on a (height, width) grid."""
    rng = np.random.default_rng(seed)
    shape = (height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    elevation = fbm(shape, 160, 5, rng)
    moisture = fbm(shape, 120, 4, rng)
    town = fbm(shape, 260, 2, rng)
    classes = np.full(shape, MEADOW, np.int8)

    angle = rng.uniform(0.3, 1.2)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    cell = (np.floor(u / 60) * 7919 + np.floor(v / 44)).astype(np.int64)
    fields = (moisture < 0.6) & (_hash(cell) % 5 != 0)
    classes[fields] = FIELD
    classes[(moisture > 0.58) & (elevation > 0.35)] = FOREST

    street_dist, lots = _streets(yy, xx, rng)
    urban = town > 0.62
    classes[urban] = URBAN
    classes[urban & (lots >= 0)] = BUILDING
    parcel = np.where(urban, lots, cell)

    river_x = (
        width * rng.uniform(0.3, 0.7)
        + 60 * np.sin(yy / 97.0)
        + 120 * (fbm(shape, 300, 2, rng) - 0.5)
    )
    water = (np.abs(xx - river_x) < 7 + 3 * moisture) | (elevation < 0.12)
    classes[water] = WATER

    minor = urban & (street_dist < 3.0)
    roads = [_wandering_line(rng, height, width, vertical) for vertical in (True, False)]
    major = np.min([_polyline_distance(yy, xx, line) for line in roads], axis=0)
    classes[minor] = MINOR_ROAD
    classes[major < 4.0] = MAJOR_ROAD
    casing = ((major >= 4.0) & (major < 5.5)) | (urban & (street_dist >= 3.0) & (street_dist < 4.2))
    rows = np.sin(u / 2.2).astype(np.float32)
    return World(classes, elevation, parcel, casing & ~water, rows)


def _hillshade(elevation: F32) -> F32:
    gy, gx = np.gradient(elevation * np.float32(400.0))
    shade: F32 = ((-gx - gy) / np.sqrt(gx * gx + gy * gy + 1.0)).astype(np.float32)
    return 0.88 + 0.12 * shade


def render_satellite(world: World, seed: int = 0) -> NDArray[np.uint8]:
    """The world as a satellite RGB image: (3, H, W) uint8."""
    rng = np.random.default_rng(seed + 1000)
    c, shape = world.classes, world.classes.shape
    fine = value_noise(shape, 3, rng)
    grain = value_noise(shape, 1.5, rng)
    rgb = np.zeros((*shape, 3), np.float32)
    rgb[:] = (100, 128, 70)  # meadow
    crop = CROPS[_hash(world.parcel) % len(CROPS)]
    rgb[c == FIELD] = (crop * (0.93 + 0.07 * world.rows[..., None]))[c == FIELD]
    rgb[c == FOREST] = (np.array((38, 66, 34)) * (0.6 + 0.8 * fine[..., None]))[c == FOREST]
    rgb[c == URBAN] = (128, 122, 112)
    roof = ROOFS[_hash(world.parcel) % len(ROOFS)]
    rgb[c == BUILDING] = roof[c == BUILDING]
    rgb[c == WATER] = (34, 58, 66)
    rgb[c == MINOR_ROAD] = (112, 110, 106)
    rgb[c == MAJOR_ROAD] = (86, 86, 88)
    rgb *= _hillshade(world.elevation)[..., None] * (0.92 + 0.16 * grain[..., None])
    rgb += np.asarray(rng.normal(0, 2.5, rgb.shape), dtype=np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8).transpose(2, 0, 1)


def render_map(world: World) -> NDArray[np.uint8]:
    """The world as a map: flat class colours with road casings, (3, H, W) uint8."""
    rgb = MAP_COLOURS[world.classes.astype(np.int64)]
    rgb[world.casing] = CASING
    return rgb.astype(np.uint8).transpose(2, 0, 1)


def write_geotiff(
    path: str | Path, data: NDArray[np.uint8], transform: Affine, names: tuple[str, ...] = ()
) -> None:
    """Write (C, H, W) uint8 as a tiled, compressed GeoTIFF in the demo CRS, atomically."""
    count, height, width = data.shape
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": "uint8",
        "crs": CRS,
        "transform": transform,
        "tiled": True,
        "blockxsize": 128,
        "blockysize": 128,
        "compress": "deflate",
        "photometric": "RGB" if count == 3 else "MINISBLACK",
    }
    with atomic_path(path, ".tif") as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
