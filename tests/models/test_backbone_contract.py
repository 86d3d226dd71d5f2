"""The backbone contract (levels, strict weights, frozen BatchNorm under SyncBatchNorm) and heads
that pick their levels by stride, on every backbone including ResNet-38."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wsss.models.backbones import (
    build_backbone,
    create_backbone,
    deepest_levels,
    levels_with_stride,
)
from wsss.models.norm import FrozenBatchNorm2d


@pytest.fixture(scope="module")
def resnet38() -> nn.Module:
    torch.manual_seed(0)
    return build_backbone("resnet38", 8, frozen_stages=2)


@pytest.mark.parametrize("name,stride", [("resnet18", 16), ("vgg16", 8)])
def test_levels_describe_the_forward_output(name: str, stride: int) -> None:
    model = build_backbone(name, stride).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    strides = [s for _, s in model.levels.values()]
    assert strides == sorted(strides)  # shallow first
    for level, (channels, s) in model.levels.items():
        assert out[level].shape == (1, channels, -(-64 // s), -(-64 // s)), level
    assert model.last == list(model.levels)[-1]


def test_resnet38_levels_and_frozen_stages(resnet38: nn.Module) -> None:
    assert resnet38.levels == {"b2": (128, 2), "b3": (256, 4), "conv4": (512, 8), "conv5": (1024, 8),
                               "conv6": (4096, 8)}  # fmt: skip
    assert levels_with_stride(resnet38, 4) == ["b3"]
    assert deepest_levels(resnet38, 3, min_stride=4) == ["conv4", "conv5", "conv6"]  # PSA's AffinityNet
    frozen = {n.split(".")[0] for n, p in resnet38.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1a", "b2", "b2_1", "b2_2"}  # PSA / SEAM / EPS heads
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in resnet38.modules())


def test_strict_loading_lists_missing_and_unexpected_keys(tmp_path, resnet38: nn.Module) -> None:
    source = build_backbone("resnet18", 16)
    state = source.state_dict()
    state["head.weight"] = torch.zeros(1)
    del state["layer4.1.conv2.weight"]
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(KeyError, match=r"1 missing keys \['layer4.1.conv2.weight'\].*1 unexpected keys \['head.weight'\]"):
        build_backbone("resnet18", 16, weights=str(tmp_path / "wrong.pth"))
    # a ResNet-18 file is not a ResNet-38 file: every key is named, nothing loads silently
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    with pytest.raises(KeyError, match=r"missing keys \[.*'b2.conv_branch2a.weight'.*unexpected keys \[.*'layer1"):
        build_backbone("resnet38", 8, weights=str(tmp_path / "r18.pth"))
    # the right file loads (num_batches_tracked may be absent, as in the converted MXNet weights)
    good = {k: v for k, v in resnet38.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(good, tmp_path / "r38.pth")
    loaded = build_backbone("resnet38", 8, weights=str(tmp_path / "r38.pth"))
    assert torch.equal(loaded.b4_3.bn_branch2b1.running_var, resnet38.b4_3.bn_branch2b1.running_var)


def test_vgg16_loads_torchvision_names_strictly(tmp_path) -> None:
    source = build_backbone("vgg16", 8)
    convs = [m for m in source.modules() if isinstance(m, nn.Conv2d)]
    # torchvision's vgg16.features indices of the 13 convs; the ImageNet classifier is dropped
    indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    tv = {f"features.{i}.{p}": getattr(c, p).detach().clone() for i, c in zip(indices, convs)
          for p in ("weight", "bias")}  # fmt: skip
    tv["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(tv, tmp_path / "vgg.pth")
    model = build_backbone("vgg16", 8, weights=str(tmp_path / "vgg.pth"))
    assert torch.equal(model.conv5[-2].weight, tv["features.28.weight"])
    tv["features.99.weight"] = torch.zeros(1)
    torch.save(tv, tmp_path / "bad.pth")
    with pytest.raises(KeyError, match=r"unexpected keys \['features.99.weight'\]"):
        build_backbone("vgg16", 8, weights=str(tmp_path / "bad.pth"))


def _assert_frozen(model: nn.Module) -> None:
    model.train()
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and all(not m.training for m in frozen)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    before = [m.running_mean.clone() for m in frozen]
    model(torch.randn(2, 3, 32, 32))
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, frozen))
    assert all(not p.requires_grad for m in frozen for p in m.buffers())


def test_frozen_batchnorm_survives_convert_sync_batchnorm(resnet38: nn.Module) -> None:
    _assert_frozen(nn.SyncBatchNorm.convert_sync_batchnorm(resnet38))
    resnet = nn.SyncBatchNorm.convert_sync_batchnorm(build_backbone("resnet18", 16, frozen_bn=True))
    _assert_frozen(resnet)
    # frozen stages freeze their BatchNorms too; later stages keep training ones (-> SyncBatchNorm)
    partly = nn.SyncBatchNorm.convert_sync_batchnorm(build_backbone("resnet18", 16, frozen_stages=2))
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in [*partly.stem.modules(), *partly.layer1.modules()])
    assert any(isinstance(m, nn.SyncBatchNorm) for m in partly.layer2.modules())


def test_frozen_batchnorm_keeps_batchnorm_state_dict_keys() -> None:
    plain = build_backbone("resnet18", 16)
    frozen = build_backbone("resnet18", 16, frozen_bn=True)
    assert list(plain.state_dict()) == list(frozen.state_dict())
    frozen.load_state_dict(plain.state_dict())
    plain.eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(plain(x)["layer4"], frozen(x)["layer4"], atol=1e-5)


def test_create_backbone_from_config_partial_and_mapping() -> None:
    from hydra.utils import instantiate

    from tests.conftest import compose_cfg

    cfg = compose_cfg(["backbone=resnet18"])
    partial = instantiate(cfg.backbone)
    assert create_backbone(partial, output_stride=8).strides["layer4"] == 8
    assert create_backbone({"name": "resnet18", "output_stride": 16}, output_stride=8).strides["layer4"] == 8


def test_heads_pick_resnet38_levels_by_stride(resnet38: nn.Module) -> None:
    from wsss.methods.affinitynet import AffinityNetModule
    from wsss.methods.irnet import IRNetModule
    from wsss.methods.seam import default_pcm_layers

    spec = {"name": "resnet38", "output_stride": 8, "frozen_stages": 2}
    opt = torch.optim.SGD
    aff = AffinityNetModule(spec, None, [64, 128, 256], opt, 10, 0.9, output_stride=8)
    assert aff.levels == ["conv4", "conv5", "conv6"] and aff.stride == 8
    irn = IRNetModule(spec, opt, 10, 0.9).eval()
    assert irn.fine == ["b3"] and irn.coarse == ["conv4", "conv5", "conv6"]
    with torch.no_grad():
        boundary, displacement = irn(torch.randn(1, 3, 32, 32))
    assert boundary.shape == (1, 1, 8, 8) and displacement.shape == (1, 2, 8, 8)
    assert default_pcm_layers(resnet38) == ["conv4", "conv5"]
