"""The one-pass shard encoder writes exactly the bytes zarr's sharding codec writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from p2p.data import chipstore
from p2p.data.chipgrid import chip_views
from p2p.data.shards import ShardEncoder


def _store(folder: Path, compression: str) -> dict[str, tuple[object, ShardEncoder | None]]:
    layout = chipstore.StoreLayout(48, 16, 32, 3, 1, "uint16", "float32", compression)
    chipstore.create_store(folder, layout, {})
    return chipstore._writable_arrays(folder)


def _chips(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "source": rng.integers(0, 3000, (16, 3, 32, 32)).astype("uint16"),
        "target": rng.normal(0, 1, (16, 1, 32, 32)).astype("float32"),
        "valid": rng.random((16, 32, 32)) > 0.3,
    }


@pytest.mark.parametrize("compression", ["lz4", "none"])
def test_full_and_partial_shards_have_zarrs_bytes(tmp_path: Path, compression: str) -> None:
    chips = _chips(0)
    for name, (array, encoder) in _store(tmp_path, compression).items():
        assert encoder is not None
        array[0:16] = chips[name]  # type: ignore[index]
        array[16:21] = chips[name][:5]  # type: ignore[index]
        for shard, n in ((0, 16), (1, 5)):
            written = (tmp_path / chipstore.STORE / name / encoder.key(shard)).read_bytes()
            assert encoder.encode(list(chips[name][:n])) == written


def test_blocks_written_by_shard_or_through_zarr_read_back_the_same(tmp_path: Path) -> None:
    chips, rows = _chips(1), [{"chip": i} for i in range(16)]
    _store(tmp_path, "lz4")
    window = np.arange(3 * 80 * 80, dtype="uint16").reshape(3, 80, 80)
    views = chip_views(window, 4, 4, 32, 16)  # overlapping chips: strided views, no copy
    chipstore.write_block(tmp_path, "0_0", 0, {**chips, "source": views}, rows)
    chipstore.write_block(tmp_path, "0_1", 20, chips, rows[:10])  # not a shard's start: zarr
    arrays = chipstore.open_arrays(tmp_path)
    np.testing.assert_array_equal(arrays["source"][0:16], np.stack(views))
    np.testing.assert_array_equal(arrays["source"][20:30], chips["source"][:10])
    np.testing.assert_array_equal(arrays["valid"][0:16], chips["valid"])
    np.testing.assert_array_equal(arrays["target"][16:20], 0)  # slots no block wrote
    assert chipstore.done_blocks(tmp_path) == {"0_0", "0_1"}
