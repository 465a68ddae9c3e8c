"""PTQ BatchNorm folding: folded == unfolded in float, for conv1d/2d/3d and conv_transpose2d."""

import pytest
import torch
from torch import nn

from inductor_quant.bn_folding import fold_bn_into_conv
from inductor_quant import convert_pt2e, prepare_pt2e
from flow_helpers import BackendQuantizer, ConvBNModel, calibrate, export, randomize_bn, sqnr

aten = torch.ops.aten


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_fold_matches_unfolded(dims):
    torch.manual_seed(0)
    model = randomize_bn(ConvBNModel(dims)).eval()
    x = torch.randn(2, 3, *([6] * dims))
    gm = export(model, x)
    assert fold_bn_into_conv(gm) == 1
    assert not any(n.target == aten.batch_norm.default for n in gm.graph.nodes)
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)
    assert "bn.running_mean" not in dict(gm.named_buffers())  # old tensors dropped


def test_fold_conv_transpose_and_no_bias():
    torch.manual_seed(0)
    model = randomize_bn(nn.Sequential(nn.ConvTranspose2d(3, 4, 3), nn.BatchNorm2d(4),
                                       nn.Conv2d(4, 4, 3, bias=False), nn.BatchNorm2d(4))).eval()
    x = torch.randn(2, 3, 5, 5)
    gm = export(model, x)
    assert fold_bn_into_conv(gm) == 2
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)


def test_bn_with_other_users_is_not_folded():
    class TwoUsers(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # conv output used twice: folding would change y

    model = randomize_bn(TwoUsers()).eval()
    x = torch.randn(1, 3, 6, 6)
    gm = export(model, x)
    assert fold_bn_into_conv(gm) == 0
    torch.testing.assert_close(gm(x), model(x))


def test_prepare_pt2e_folds_bn_and_quantizes_well():
    torch.manual_seed(0)
    model = randomize_bn(ConvBNModel(2)).eval()
    x = torch.randn(4, 3, 8, 8)
    p = prepare_pt2e(export(model, x), BackendQuantizer(per_channel=True))
    assert not any(n.target == aten.batch_norm.default for n in p.graph.nodes)
    calibrate(p, [x])
    q = convert_pt2e(p)
    assert sqnr(model(x), q(x)) >= 20


def test_fold_same_padding_conv():
    torch.manual_seed(0)
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3, padding="same"), nn.BatchNorm2d(4))).eval()
    x = torch.randn(1, 3, 6, 6)
    gm = export(model, x)
    assert fold_bn_into_conv(gm) == 1
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)
