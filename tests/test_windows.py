"""Window geometry: centres partition the scene, blending weights sum to one everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.infer.windows import AxisLayout, add_weighted, axis_layout, reflect_index, take_runs


@st.composite
def layouts(draw: st.DrawFn) -> AxisLayout:
    tile = draw(st.integers(2, 96))
    overlap = draw(st.integers(0, (tile - 1) // 2))
    size = draw(st.integers(1, 400))
    blend = draw(st.sampled_from(["cosine", "linear", "none"]))
    return AxisLayout(size, tile, overlap, blend)


def _coverage(layout: AxisLayout) -> np.ndarray:
    """Sum of the normalized weights of all windows at every scene pixel."""
    total = np.zeros(layout.size)
    for k in range(layout.count):
        s = layout.start(k)
        for u in range(layout.tile):
            if 0 <= s + u < layout.size:
                total[s + u] += layout.weights[k, u]
    return total


@settings(max_examples=150, deadline=None)
@given(layouts())
def test_axis_weights_sum_to_one_everywhere(layout: AxisLayout) -> None:
    np.testing.assert_allclose(_coverage(layout), 1.0, rtol=0, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(layouts(), layouts())
def test_2d_weights_sum_to_one_over_every_pixel(ly: AxisLayout, lx: AxisLayout) -> None:
    total = np.zeros((ly.size, lx.size))
    for j in range(ly.count):
        for i in range(lx.count):
            w = np.outer(ly.weights[j], lx.weights[i])
            sy, sx = ly.start(j), lx.start(i)
            ya, yb = max(0, sy), min(ly.size, sy + ly.tile)
            xa, xb = max(0, sx), min(lx.size, sx + lx.tile)
            total[ya:yb, xa:xb] += w[ya - sy : yb - sy, xa - sx : xb - sx]
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-12)


@settings(max_examples=150, deadline=None)
@given(layouts())
def test_centres_partition_the_axis_and_covering_is_exact(layout: AxisLayout) -> None:
    seen = np.zeros(layout.size, dtype=int)
    for k in range(layout.count):
        a, b = layout.centre(k)
        seen[a:b] += 1
        expected = [
            j
            for j in range(layout.count)
            if layout.start(j) < b and layout.start(j) + layout.tile > a
        ]
        assert list(layout.covering(a, b)) == expected
    assert (seen == 1).all()


def test_cosine_ramp_favours_window_centres() -> None:
    layout = AxisLayout(200, 48, 8, "cosine")
    w = layout.weights[1]
    assert w[0] < 0.01 and w[24] == 1.0 and w[47] < 0.01
    assert np.all(np.diff(w[:24]) >= 0) and np.all(np.diff(w[24:]) <= 0)


def test_short_axis_gets_one_window_rounded_to_the_model_multiple() -> None:
    layout = axis_layout(40, 64, 8, 16, "cosine")
    assert (layout.tile, layout.overlap, layout.count) == (48, 0, 1)
    with pytest.raises(ValueError, match="multiple 16"):
        axis_layout(12, 64, 8, 16, "cosine")


def test_reflect_index_mirrors_about_the_edge_pixels_like_numpy() -> None:
    data = np.arange(7)
    positions = np.arange(-6, 13)
    np.testing.assert_array_equal(
        data[reflect_index(positions, 7)], np.pad(data, (6, 6), mode="reflect")
    )
    np.testing.assert_array_equal(reflect_index(np.arange(-3, 6), 3), [1, 2, 1, 0, 1, 2, 1, 0, 1])
    assert (reflect_index(np.arange(-2, 3), 1) == 0).all()


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 40),
    start=st.integers(-60, 40),
    length=st.integers(1, 100),
    axis=st.integers(0, 2),
)
def test_take_runs_takes_what_numpy_takes(size: int, start: int, length: int, axis: int) -> None:
    """A reflected window index (runs in order, mirrored pixels, any scene size) and a
    shuffled one: the slice copies give numpy's gather exactly."""
    shape = [3, 5, 4]
    shape[axis] = size
    x = np.random.default_rng(size).normal(size=shape).astype(np.float32)
    index = reflect_index(np.arange(start, start + length), size)
    np.testing.assert_array_equal(take_runs(x, index, axis), x.take(index, axis))
    shuffled = np.random.default_rng(length).permutation(index)
    np.testing.assert_array_equal(take_runs(x, shuffled, axis), x.take(shuffled, axis))


@settings(max_examples=60, deadline=None)
@given(layout=layouts(), axis=st.integers(1, 2), lo=st.integers(0, 95), seed=st.integers(0, 9))
def test_add_weighted_sums_as_the_multiply_would(
    layout: AxisLayout, axis: int, lo: int, seed: int
) -> None:
    """Leaving the multiply out where a window's float32 weight is exactly 1 gives the very
    sums of ``dst += src * w``, for any window and any part of it."""
    rng = np.random.default_rng(seed)
    k = seed % layout.count
    weights = layout.weights.astype(np.float32)
    lo = min(lo, layout.tile - 1)
    w = weights[k, lo:]
    u0, u1 = layout.unit_runs[k]
    assert (weights[k, u0:u1] == 1).all() and (u0 == u1 or 1 not in weights[k, :u0])
    shape = [2, 3, 3]
    shape[axis] = len(w)
    src = rng.normal(size=shape).astype(np.float32)
    dst = rng.normal(size=shape).astype(np.float32)
    expected = dst + src * (w if axis == 2 else w[:, None])
    tensor = torch.from_numpy(dst.copy())  # the GPU path's arrays: one multiply and add
    add_weighted(dst, src, w if axis == 2 else w[:, None], (u0 - lo, u1 - lo), axis)
    np.testing.assert_array_equal(dst, expected)
    weights_t = torch.from_numpy(w if axis == 2 else w[:, None].copy())
    add_weighted(tensor, torch.from_numpy(src), weights_t, (u0 - lo, u1 - lo), axis)
    np.testing.assert_array_equal(tensor.numpy(), expected)
