"""Pix2Pix losses: the halved D loss, and L1 masked by nodata."""

from __future__ import annotations

import math

import pytest
import torch

from p2p.model.losses import discriminator_loss, generator_loss, masked_l1


def test_masked_l1_ignores_nodata_pixels_whatever_their_error() -> None:
    target = torch.zeros(1, 2, 4, 4)
    pred = torch.full((1, 2, 4, 4), 0.25)
    valid = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    valid[..., :2, :] = True  # top half valid
    pred[..., 2:, :] = 1e6  # huge errors on nodata ...
    pred[0, 0, 3, 3] = float("nan")  # ... and even NaN
    loss = masked_l1(pred, target, valid)
    assert loss.item() == pytest.approx(0.25)


def test_masked_l1_gradient_is_zero_on_nodata() -> None:
    pred = torch.randn(1, 1, 4, 4, requires_grad=True)
    valid = torch.zeros(1, 1, 4, 4)
    valid[..., 0, 0] = 1.0
    masked_l1(pred, torch.zeros(1, 1, 4, 4), valid).backward()
    assert pred.grad is not None
    assert torch.count_nonzero(pred.grad) == 1


def test_no_valid_pixel_gives_zero_not_nan() -> None:
    pred = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = masked_l1(pred, torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4, 4))
    loss.backward()
    assert loss.item() == 0.0
    assert pred.grad is not None and torch.count_nonzero(pred.grad) == 0


def test_discriminator_loss_is_halved_bce() -> None:
    real = torch.full((2, 1, 3, 3), 2.0)
    fake = torch.full((2, 1, 3, 3), -1.0)
    # BCE(real=2 → 1) = log(1 + e^-2); BCE(fake=-1 → 0) = log(1 + e^-1)
    expected = 0.5 * (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0)))
    assert discriminator_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)


def test_generator_loss_adds_lambda_times_masked_l1() -> None:
    logits = torch.zeros(1, 1, 3, 3)  # BCE(0 → 1) = log 2
    pred = torch.full((1, 1, 4, 4), 0.5)
    valid = torch.ones(1, 1, 4, 4)
    valid[..., 0, :] = 0
    pred[..., 0, :] = 100.0
    total, adv, l1 = generator_loss(logits, pred, torch.zeros_like(pred), valid, lambda_l1=100.0)
    assert adv.item() == pytest.approx(math.log(2))
    assert l1.item() == pytest.approx(0.5)
    assert total.item() == pytest.approx(math.log(2) + 50.0)
