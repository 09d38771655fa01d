"""Pix2Pix networks: reference parameter counts, shapes, size check and weight init."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from p2p.core.errors import InputError
from p2p.model.networks import PatchGANDiscriminator, UNetGenerator, init_weights


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_default_networks_have_the_reference_parameter_counts() -> None:
    assert _count(UNetGenerator(3, 3)) == 54_413_955
    assert _count(PatchGANDiscriminator(6)) == 2_768_705


def test_batchnorm_convs_carry_no_bias_and_three_dropout_blocks() -> None:
    g = UNetGenerator(3, 3)
    convs = [m for m in g.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    # only the final up-convolution (followed by tanh, not BatchNorm) has a bias
    assert sum(m.bias is not None for m in convs) == 1
    assert sum(isinstance(m, nn.Dropout) for m in g.modules()) == 3
    assert all(m.p == 0.5 for m in g.modules() if isinstance(m, nn.Dropout))
    assert not any(isinstance(m, nn.Dropout) for m in UNetGenerator(3, 3, dropout=0).modules())


@pytest.mark.parametrize(("cin", "cout"), [(2, 1), (4, 3)])
@pytest.mark.parametrize("size", [256, 512])
def test_shapes_for_any_band_counts(cin: int, cout: int, size: int) -> None:
    torch.manual_seed(0)
    g = UNetGenerator(cin, cout, ngf=8).eval()
    d = PatchGANDiscriminator(cin + cout, ndf=8).eval()
    x = torch.rand(1, cin, size, size) * 2 - 1
    with torch.no_grad():
        y = g(x)
        logits = d(x, y)
    assert y.shape == (1, cout, size, size)
    assert y.abs().max() <= 1.0  # tanh output
    side = size // 8 - 2  # three stride-2 convs, then two 4x4 stride-1 convs with padding 1
    assert logits.shape == (1, 1, side, side)
    if size == 256:
        assert side == 30


def test_input_side_not_a_multiple_is_a_clear_error() -> None:
    g = UNetGenerator(3, 3, num_downs=4, ngf=8)
    with pytest.raises(InputError, match=r"40x48 pixels.*multiple of 2\^num_downs = 16"):
        g(torch.zeros(1, 3, 40, 48))


def test_init_weights_follows_the_paper() -> None:
    torch.manual_seed(0)
    g = UNetGenerator(3, 3, ngf=32)
    for m in g.modules():  # spoil every value so init must set all of them
        for p in m.parameters(recurse=False):
            nn.init.constant_(p, 7.0)
    init_weights(g, gain=0.02)
    conv_w = torch.cat(
        [m.weight.flatten() for m in g.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    )
    bn_w = torch.cat([m.weight for m in g.modules() if isinstance(m, nn.BatchNorm2d)])
    biases = torch.cat([m.bias for m in g.modules() if getattr(m, "bias", None) is not None])
    assert abs(conv_w.mean().item()) < 1e-3
    assert conv_w.std().item() == pytest.approx(0.02, rel=0.02)
    assert bn_w.mean().item() == pytest.approx(1.0, abs=5e-3)
    assert bn_w.std().item() == pytest.approx(0.02, rel=0.2)
    assert torch.count_nonzero(biases) == 0


def test_instance_norm_variant_uses_biases() -> None:
    g = UNetGenerator(3, 3, num_downs=5, ngf=8, norm="instance")
    convs = [m for m in g.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert all(m.bias is not None for m in convs)
    with pytest.raises(ValueError, match="norm must be one of"):
        UNetGenerator(3, 3, num_downs=5, ngf=8, norm="group")
