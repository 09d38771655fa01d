"""Robust per-band normalization and its exact inverse."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.bands.normalization import BandStats, denormalize, normalize

STATS = BandStats(mean=(100.0, 5.0), std=(10.0, 1.0), low=(50.0, 0.0), high=(150.0, 10.0))


def test_maps_low_high_to_minus_one_one_and_clips() -> None:
    x = np.array([[[50, 150, 0, 1000]], [[0, 10, 5, -3]]], dtype=np.float32)
    y = normalize(x, STATS)
    np.testing.assert_allclose(y[0, 0], [-1, 1, -1, 1])
    np.testing.assert_allclose(y[1, 0], [-1, 1, 0, -1])


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=0, max_value=1), st.floats(min_value=0, max_value=1))
def test_inverse_is_exact_inside_the_clip_range(a: float, b: float) -> None:
    x = np.array([[[50 + 100 * a]], [[10 * b]]], dtype=np.float32)
    np.testing.assert_allclose(denormalize(normalize(x, STATS), STATS), x, rtol=1e-5, atol=1e-4)


def test_torch_and_numpy_agree_on_batched_input() -> None:
    x = np.random.default_rng(0).uniform(0, 200, size=(3, 2, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(
        normalize(torch.from_numpy(x), STATS).numpy(), normalize(x, STATS), rtol=1e-6
    )


def test_constant_band_does_not_divide_by_zero() -> None:
    flat = BandStats(mean=(3.0,), std=(0.0,), low=(3.0,), high=(3.0,))
    assert np.isfinite(normalize(np.full((1, 2, 2), 3.0, np.float32), flat)).all()


def test_round_trips_through_json() -> None:
    assert BandStats.from_dict(STATS.to_dict()) == STATS
