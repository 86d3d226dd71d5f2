"""EfficientNet-Lite0: the packaged ImageNet weights load strictly; levels and strides."""

from __future__ import annotations

import pytest
import torch

from wsss.models.backbones import build_backbone
from wsss.models.efficientnet import build_efficientnet_lite0, load_lite0_weights, package_weights


def test_package_weights_load_strictly_every_tensor_but_fc() -> None:
    state = torch.load(package_weights(), map_location="cpu", weights_only=True)
    assert len(state) == 296
    model = build_efficientnet_lite0(output_stride=32)
    own = model.state_dict()
    assert set(own) == {k for k in state if not k.startswith("_fc.")}  # 294 tensors, all used
    assert torch.equal(own["_blocks.15._project_conv.weight"], state["_blocks.15._project_conv.weight"])
    assert sum(p.numel() for p in model.parameters()) + state["_fc.weight"].numel() + 1000 == pytest.approx(
        4.65e6, rel=0.01)


def test_levels_and_output_strides() -> None:
    x = torch.zeros(1, 3, 64, 96)
    for os_ in (32, 16, 8):
        model = build_backbone(name="efficientnet_lite0", output_stride=os_, weights=None).eval()
        out = model(x)
        assert model.last == "c5" and model.out_channels == 1280
        for name, (channels, stride) in model.levels.items():
            assert out[name].shape == (1, channels, -(-64 // stride), -(-96 // stride)), (os_, name)
        assert model.strides["c5"] == os_


    assert build_efficientnet_lite0(weights=None).mean[0] == pytest.approx(127 / 255)  # TF lite input


def test_wrong_file_is_a_clear_error(tmp_path) -> None:
    state = torch.load(package_weights(), map_location="cpu", weights_only=True)
    del state["_blocks.3._bn1.running_var"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(KeyError, match=r"1 missing \['_blocks.3._bn1.running_var'\].*1 unexpected \['extra.weight'\]"):
        load_lite0_weights(build_efficientnet_lite0(weights=None), path)
    with pytest.raises(FileNotFoundError, match="backbone.weights"):
        build_efficientnet_lite0(weights=str(tmp_path / "none.pth"))
