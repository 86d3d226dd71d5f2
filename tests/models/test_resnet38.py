"""ResNet-38 (PSA/SEAM/EPS backbone): output stride 8, channels, frozen BN and conv1a."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wsss.models.norm import FrozenBatchNorm2d
from wsss.models.resnet38 import ResNet38


@pytest.fixture(scope="module")
def model() -> ResNet38:
    torch.manual_seed(0)
    return ResNet38()


def test_forward_stride_8_and_channels(model: ResNet38) -> None:
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert set(out) == set(model.channels) == set(model.strides)
    # conv1a keeps stride 1, b2/b3/b4 halve; b5 (dilation 2), b6/b7 (dilation 4) keep stride 8
    assert model.strides == {"b2": 2, "b3": 4, "b4": 8, "b5": 8, "b6": 8,
                             "conv4": 8, "conv5": 8, "conv6": 8}
    assert model.channels == {"b2": 128, "b3": 256, "b4": 512, "b5": 1024, "b6": 2048,
                              "conv4": 512, "conv5": 1024, "conv6": 4096}
    for name, feat in out.items():
        size = 64 // model.strides[name]
        assert feat.shape == (1, model.channels[name], size, size), name
    assert model.last == "conv6" and model.out_channels == 4096
    assert (out["conv6"] >= 0).all() and (out["conv4"] >= 0).all()  # post-ReLU features


def test_train_keeps_batchnorm_in_eval(model: ResNet38) -> None:
    returned = model.train()
    assert returned is model and model.training
    bns = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(bns) == 15 * 2 + 2 * 3 + 1  # 15 basic blocks, b6/b7 bottlenecks, bn7
    assert all(not bn.training for bn in bns)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout2d)]
    assert [d.p for d in drops] == [0.3, 0.3, 0.5, 0.5] and all(d.training for d in drops)
    before = model.bn7.running_mean.clone()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert torch.equal(model.bn7.running_mean, before)  # running stats never update
    model.eval()
    assert all(not bn.training for bn in bns)


def test_frozen_parameters(model: ResNet38) -> None:
    assert not model.conv1a.weight.requires_grad
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            assert not m.weight.requires_grad and not m.bias.requires_grad
    assert model.b2.conv_branch2a.weight.requires_grad
    assert model.b7.conv_branch2b2.weight.requires_grad
    # PSA re-freezes in train(): a global requires_grad_(True) cannot unfreeze
    model.requires_grad_(True)
    model.train()
    assert not model.conv1a.weight.requires_grad and not model.bn7.weight.requires_grad


def test_freeze_low_stages_and_errors() -> None:
    net = ResNet38(frozen=("conv1a", "b2", "b2_1", "b2_2"))
    assert not net.b2_2.conv_branch2b1.weight.requires_grad
    assert net.b3.conv_branch2a.weight.requires_grad
    with pytest.raises(ValueError, match="b9"):
        ResNet38(frozen=("b9",))


def test_parameter_names_match_psa(model: ResNet38) -> None:
    keys = set(model.state_dict())
    for key in ["conv1a.weight", "b2.conv_branch1.weight", "b4_5.bn_branch2b1.running_var",
                "b5.conv_branch1.weight", "b6.bn_branch2b2.weight", "b7.conv_branch2b2.weight",
                "bn7.running_mean"]:
        assert key in keys
    assert "b2_1.conv_branch1.weight" not in keys  # same-shape blocks use the identity shortcut
