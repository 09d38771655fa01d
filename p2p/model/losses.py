"""Pix2Pix objectives (Isola et al., 2017, eq. 1-4), with the L1 term masked by nodata.

    L_D = BCE(D(x, y), 1) + BCE(D(x, G(x)), 0)
    L_G = BCE(D(x, G(x)), 1) + λ · L1(y, G(x)) over valid pixels

The discriminator is stepped on ½·L_D, as the paper and the reference code do ("we divide the
objective by 2 while optimizing D, which slows down the rate at which D learns relative to G").
BCE is taken on logits (BCEWithLogits), which is the reference's "vanilla" GAN loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Mean BCE-with-logits of a patch map against an all-real or all-fake label."""
    label = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits.float(), label.float())


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The loss D is stepped on: ½ · (BCE(D(x, y), 1) + BCE(D(x, G(x)), 0)).

    Args:
        real_logits: `(N, 1, h, w)` D's logits for (source, target).
        fake_logits: `(N, 1, h, w)` D's logits for (source, detached generator output).

    Returns:
        Scalar float32 loss (already halved).
    """
    return 0.5 * (_bce(real_logits, True) + _bce(fake_logits, False))


def masked_l1(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over valid pixels and all channels.

    Nodata pixels contribute nothing, however large their error; with no valid pixel at all
    the loss is 0 (with a gradient of 0), not NaN.

    Args:
        pred: `(N, C, H, W)` normalized prediction.
        target: `(N, C, H, W)` normalized target.
        valid: `(N, 1, H, W)` bool or 0/1 float, true where source and target are both valid.

    Returns:
        Scalar float32 loss.
    """
    mask = valid.to(dtype=torch.bool).expand_as(pred)
    # where() rather than multiplying, so NaN or inf at nodata cannot leak into the sum
    err = torch.where(
        mask, (pred.float() - target.float()).abs(), pred.new_zeros((), dtype=torch.float32)
    )
    return err.sum() / mask.sum().clamp(min=1)


def generator_loss(
    fake_logits: torch.Tensor,
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    lambda_l1: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The generator's loss: BCE(D(x, G(x)), 1) + λ · masked L1(y, G(x)).

    Args:
        fake_logits: `(N, 1, h, w)` D's logits for (source, generator output), not detached.
        pred: `(N, C, H, W)` generator output.
        target: `(N, C, H, W)` normalized target.
        valid: `(N, 1, H, W)` validity mask.
        lambda_l1: Weight of the L1 term (100 in the paper).

    Returns:
        ``(total, adversarial, l1)`` scalar float32 tensors.
    """
    adversarial = _bce(fake_logits, True)
    l1 = masked_l1(pred, target, valid)
    return adversarial + lambda_l1 * l1, adversarial, l1
