"""A block's chips as one Zarr v3 shard, encoded in one synchronous pass.

The chip store keeps one chip per inner chunk and one block per shard (`p2p.data.chipstore`).
Writing a block through ``zarr.Array.__setitem__`` costs about three times the CPU of the
compression itself (measured on 64 chips of 3 x 256² uint16: 45 ms against 15 ms): zarr fills
a fresh buffer per chunk, copies the chips in, and schedules every chunk's codec as an asyncio
task on its single event-loop thread, which the tiling threads then share. Here each chip is
encoded straight from its view of the block window (one contiguous copy, then Blosc), and the
shard is assembled exactly as zarr's sharding codec lays it out: the encoded chunks in order,
then the index (offset, length as little-endian uint64 per chunk; 2^64 - 1 for an absent chunk)
and its CRC32C. A test checks the bytes equal zarr's for full and partial shards.

Only the layout `chipstore` creates is encoded here (sharding with the index at the end; inner
codecs ``bytes`` (little-endian) then Blosc or nothing; index codecs ``bytes`` + ``crc32c``);
`ShardEncoder.for_array` answers None for anything else, and the caller falls back to zarr.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import google_crc32c
import numpy as np
from numcodecs import Blosc
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec

ABSENT = np.uint64(2**64 - 1)
_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


@dataclass(frozen=True)
class ShardEncoder:
    """Encodes the chips of one shard of an array with one chip per inner chunk.

    Attributes:
        chips_per_shard: Inner chunks along the first axis (the only one split).
        chip_shape: Shape of one chip (the array's shape less the first axis).
        dtype: The array's dtype.
        blosc: The inner Blosc codec, or None for uncompressed chunks.
    """

    chips_per_shard: int
    chip_shape: tuple[int, ...]
    dtype: np.dtype[Any]
    blosc: Blosc | None

    @classmethod
    def for_array(cls, array: Any) -> ShardEncoder | None:
        """The encoder of a zarr array in the chip store's layout, else None."""
        codecs = array.metadata.codecs
        if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
            return None
        sharding = codecs[0]
        shard, chunk = array.metadata.chunk_grid.chunk_shape, sharding.chunk_shape
        index_ok = [type(c) for c in sharding.index_codecs] == [BytesCodec, Crc32cCodec]
        if (
            sharding.index_location.value != "end"
            or not index_ok
            or chunk[0] != 1
            or tuple(shard[1:]) != tuple(chunk[1:]) != tuple(array.shape[1:])
        ):
            return None
        inner = list(sharding.codecs)
        if not inner or not isinstance(inner[0], BytesCodec):
            return None
        if inner[0].endian is not None and inner[0].endian.value != "little":
            return None
        blosc = None
        if len(inner) == 2 and isinstance(inner[1], BloscCodec):
            c = inner[1]
            blosc = Blosc(
                cname=c.cname.value,
                clevel=c.clevel,
                shuffle=_SHUFFLE[c.shuffle.value],
                blocksize=c.blocksize,
                typesize=c.typesize,
            )
        elif len(inner) != 1:
            return None
        dtype = np.dtype(array.dtype).newbyteorder("<")
        return cls(int(shard[0]), tuple(int(s) for s in chunk[1:]), dtype, blosc)

    def encode(self, chips: Sequence[np.ndarray] | np.ndarray) -> bytes:
        """The shard holding `chips` in its first ``len(chips)`` slots (the rest absent).

        Args:
            chips: Up to `chips_per_shard` arrays of `chip_shape` (any strides).
        """
        if len(chips) > self.chips_per_shard:
            raise ValueError(f"{len(chips)} chips for a shard of {self.chips_per_shard}")
        index = np.full((self.chips_per_shard, 2), ABSENT, dtype="<u8")
        parts: list[bytes] = []
        offset = 0
        for n, chip in enumerate(chips):
            raw = np.ascontiguousarray(chip, dtype=self.dtype)
            data = raw.tobytes() if self.blosc is None else self.blosc.encode(raw.view(np.uint8))
            parts.append(data)
            index[n] = (offset, len(data))
            offset += len(data)
        index_bytes = index.tobytes()
        parts.append(index_bytes)
        parts.append(np.uint32(google_crc32c.value(index_bytes)).astype("<u4").tobytes())
        return b"".join(parts)

    def key(self, shard: int) -> str:
        """The shard's key below the array (the default chunk key encoding, ``c/i/0/...``)."""
        return "/".join(["c", str(shard), *["0"] * len(self.chip_shape)])
