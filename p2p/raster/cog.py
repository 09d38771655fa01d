"""Cloud Optimized GeoTIFFs assembled from a finished tiled GeoTIFF, without re-encoding it.

A COG is a tiled GeoTIFF whose image file directories (IFDs) all come first, then the tiles of
its overviews from the smallest up, then the full-resolution tiles (GDAL's COG layout, which
`rio cogeo validate` checks). p2p's streaming writers already produce the full-resolution
tiles, compressed, in that tiling; GDAL's COG conversion would decode and re-encode every one
of them and copy the file twice. Here GDAL builds only the overviews (into a sidecar ``.ovr``
file), and this module writes the header, the IFDs and the tiles of both files, copying the
compressed tiles byte for byte, with GDAL's structural metadata (block leaders and trailers).

The output depends only on the source's tags and tile bytes, not on where in the file a
streaming writer happened to put them, so a resumed run and an uninterrupted one give the same
file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import rasterio
from rasterio.enums import Resampling

#: Tags rewritten here: TileOffsets, TileByteCounts (and NewSubfileType on overviews).
TILE_OFFSETS, TILE_BYTE_COUNTS, SUBFILE_TYPE, GDAL_NODATA = 324, 325, 254, 42113
#: Tags an overview IFD keeps from GDAL's ``.ovr`` (image structure only, as GDAL's COGs).
OVERVIEW_TAGS = {256, 257, 258, 259, 262, 277, 284, 317, 322, 323, 338, 339}
_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
              13: 4, 16: 8, 17: 8, 18: 8}  # fmt: skip
_INT_FORMAT = {3: "H", 4: "I", 16: "Q"}
_GHOST = (
    "LAYOUT=IFDS_BEFORE_DATA\nBLOCK_ORDER=ROW_MAJOR\nBLOCK_LEADER=SIZE_AS_UINT4\n"
    "BLOCK_TRAILER=LAST_4_BYTES_REPEATED\nKNOWN_INCOMPATIBLE_EDITION=NO\n "
)
_GHOST_HEADER = f"GDAL_STRUCTURAL_METADATA_SIZE={len(_GHOST):06d} bytes\n{_GHOST}".encode()


@dataclass(frozen=True)
class _Ifd:
    """One image of a TIFF: its tags as raw values (the file's byte order), and its tiles."""

    tags: dict[int, tuple[int, int, bytes]]  # tag → (type, count, value bytes)
    offsets: tuple[int, ...]
    counts: tuple[int, ...]


def overview_factors(width: int, height: int, block: int) -> list[int]:
    """Decimation factors 2, 4, ... until the smaller side fits in one block (rio-cogeo's
    rule)."""
    factors, factor = [], 1
    while min(width // factor, height // factor) > block:
        factor *= 2
        factors.append(factor)
    return factors


def _read_ifds(path: Path) -> tuple[str, list[_Ifd]]:
    """The byte order and every IFD of a TIFF or BigTIFF, following the IFD chain."""
    with path.open("rb") as f:
        head = f.read(16)
        order = {b"II": "<", b"MM": ">"}[head[:2]]
        big = struct.unpack(order + "H", head[2:4])[0] == 43
        count_fmt, ptr_fmt, inline = ("Q", "Q", 8) if big else ("H", "I", 4)
        (offset,) = struct.unpack(order + ptr_fmt, head[8:16] if big else head[4:8])
        ifds = []
        while offset:
            f.seek(offset)
            (n,) = struct.unpack(order + count_fmt, f.read(struct.calcsize(count_fmt)))
            raw = [f.read(20 if big else 12) for _ in range(n)]
            (offset,) = struct.unpack(order + ptr_fmt, f.read(struct.calcsize(ptr_fmt)))
            tags = {}
            for entry in raw:
                tag, typ, count = struct.unpack(order + ("HHQ" if big else "HHI"), entry[:-inline])
                size = _TYPE_SIZE[typ] * count
                value = entry[-inline:][:size]
                if size > inline:
                    (where,) = struct.unpack(order + ptr_fmt, entry[-inline:])
                    f.seek(where)
                    value = f.read(size)
                tags[tag] = (typ, count, value)
            offsets, counts = (_ints(order, tags[t]) for t in (TILE_OFFSETS, TILE_BYTE_COUNTS))
            ifds.append(_Ifd(tags, offsets, counts))
        return order, ifds


def _ints(order: str, entry: tuple[int, int, bytes]) -> tuple[int, ...]:
    typ, count, value = entry
    return struct.unpack(f"{order}{count}{_INT_FORMAT[typ]}", value)


def _overview_ifd(ifd: _Ifd, main: _Ifd, order: str) -> _Ifd:
    """An overview's IFD as GDAL's COGs have it: structure tags, reduced-image type, nodata."""
    tags = {t: v for t, v in ifd.tags.items() if t in OVERVIEW_TAGS}
    tags[SUBFILE_TYPE] = (4, 1, struct.pack(order + "I", 1))
    if GDAL_NODATA in main.tags:
        tags[GDAL_NODATA] = main.tags[GDAL_NODATA]
    return _Ifd(tags, ifd.offsets, ifd.counts)


class _Layout:
    """Where every IFD, out-of-line tag value and tile goes in the output."""

    def __init__(self, ifds: list[_Ifd], order: str, big: bool) -> None:
        self.order, self.big = order, big
        self.inline = 8 if big else 4
        self.header = 16 if big else 8
        pos = self.header + len(_GHOST_HEADER)
        pos += pos % 2
        self.ifd_at: list[int] = []
        for ifd in ifds:  # IFDs, each followed by its out-of-line values
            self.ifd_at.append(pos)
            pos += self._ifd_size(ifd)
        self.tile_at: list[list[int]] = [[] for _ in ifds]
        for level in reversed(range(len(ifds))):  # smallest overview first, full resolution last
            for count in ifds[level].counts:
                self.tile_at[level].append(pos + 4 if count else 0)
                pos += count + 8 if count else 0
        self.size = pos

    def _ifd_size(self, ifd: _Ifd) -> int:
        entries = self._entries(ifd, [0] * len(ifd.offsets))
        size = (8 if self.big else 2) + len(entries) * (20 if self.big else 12) + self.inline
        for _, _, value in entries.values():
            if len(value) > self.inline:
                size += len(value) + len(value) % 2
        return size

    def _entries(self, ifd: _Ifd, tiles: list[int]) -> dict[int, tuple[int, int, bytes]]:
        """The IFD's tags with its tile offsets and byte counts in this layout, sorted."""
        typ, fmt = (16, "Q") if self.big else (4, "I")
        tags = dict(ifd.tags)
        for tag, values in ((TILE_OFFSETS, tiles), (TILE_BYTE_COUNTS, ifd.counts)):
            tags[tag] = (typ, len(values), struct.pack(f"{self.order}{len(values)}{fmt}", *values))
        return dict(sorted(tags.items()))

    def ifd_bytes(self, i: int, ifd: _Ifd, next_ifd: int) -> bytes:
        """IFD `i` and its out-of-line values, placed at `self.ifd_at[i]`."""
        o, big = self.order, self.big
        entries = self._entries(ifd, self.tile_at[i])
        table = struct.pack(o + ("Q" if big else "H"), len(entries))
        values = b""
        extra_at = self.ifd_at[i] + len(table) + len(entries) * (20 if big else 12) + self.inline
        for tag, (typ, count, value) in entries.items():
            head = struct.pack(o + ("HHQ" if big else "HHI"), tag, typ, count)
            if len(value) > self.inline:
                table += head + struct.pack(o + ("Q" if big else "I"), extra_at + len(values))
                values += value + b"\0" * (len(value) % 2)
            else:
                table += head + value.ljust(self.inline, b"\0")
        table += struct.pack(o + ("Q" if big else "I"), next_ifd) + values
        assert len(table) == self._ifd_size(ifd), "IFD size and layout disagree"
        return table


def _copy_tiles(sources: list[Path], ifds: list[_Ifd], out: BinaryIO) -> None:
    """Tiles of every level, smallest overview first, each between its leader and trailer."""
    for level in reversed(range(len(ifds))):
        with sources[level].open("rb") as src:
            for offset, count in zip(ifds[level].offsets, ifds[level].counts, strict=True):
                if count:
                    src.seek(offset)
                    data = src.read(count)
                    out.write(struct.pack("<I", count) + data + data[-4:])


def build_overviews(src: Path, block: int, predictor: int, codec: str = "DEFLATE") -> Path | None:
    """Average overviews of `src` in a sidecar ``.ovr`` (`codec`, as `src`'s tiles; tiled like
    `src`), or None when `src` fits in one block. The source file is not modified."""
    ovr = src.with_name(src.name + ".ovr")
    ovr.unlink(missing_ok=True)  # a killed run's leftover
    with rasterio.open(src) as ds:
        factors = overview_factors(ds.width, ds.height, block)
    if not factors:
        return None
    options = {
        "TIFF_USE_OVR": True, "COMPRESS_OVERVIEW": codec, "ZLEVEL_OVERVIEW": 6,
        "GDAL_TIFF_OVR_BLOCKSIZE": block,
        **({"PREDICTOR_OVERVIEW": predictor} if codec != "NONE" else {}),
        "INTERLEAVE_OVERVIEW": "PIXEL", "BIGTIFF_OVERVIEW": "IF_SAFER",
    }  # fmt: skip
    with rasterio.Env(**options), rasterio.open(src, "r+") as ds:
        ds.build_overviews(factors, Resampling.average)
    return ovr


def assemble_cog(src: Path, dst: Path, block: int, bigtiff: bool | None = None) -> None:
    """Write the tiled GeoTIFF `src` as a COG at `dst` (see the module docstring).

    Args:
        src: A complete tiled, compressed GeoTIFF with one IFD (as `p2p.raster.geotiff` writes).
        dst: The COG to write (overwritten).
        block: The tile side of `src`, also used for the overviews.
        bigtiff: Write a BigTIFF; by default only when the file would pass 4 GiB.
    """
    with rasterio.open(src) as ds:
        floats = np.issubdtype(np.dtype(ds.dtypes[0]), np.floating)
        codec = ds.compression.value if ds.compression is not None else "NONE"
    ovr = build_overviews(src, block, 3 if floats else 2, codec)
    try:
        order, (main, *_) = _read_ifds(src)
        sources, ifds = [src], [main]
        if ovr is not None:
            ovr_order, overviews = _read_ifds(ovr)
            if ovr_order != order:
                raise ValueError(f"{ovr}: byte order differs from {src}")
            sources += [ovr] * len(overviews)
            ifds += [_overview_ifd(ifd, main, order) for ifd in overviews]
        layout = _Layout(ifds, order, big=bool(bigtiff))
        if bigtiff is None and layout.size >= 1 << 32:
            layout = _Layout(ifds, order, big=True)
        with dst.open("wb") as out:
            magic = b"II" if order == "<" else b"MM"
            if layout.big:
                out.write(magic + struct.pack(order + "HHHQ", 43, 8, 0, layout.ifd_at[0]))
            else:
                out.write(magic + struct.pack(order + "HI", 42, layout.ifd_at[0]))
            out.write(_GHOST_HEADER.ljust(layout.ifd_at[0] - layout.header, b"\0"))
            for i, ifd in enumerate(ifds):
                nxt = layout.ifd_at[i + 1] if i + 1 < len(ifds) else 0
                out.write(layout.ifd_bytes(i, ifd, nxt))
            _copy_tiles(sources, ifds, out)
    finally:
        if ovr is not None:
            ovr.unlink(missing_ok=True)
