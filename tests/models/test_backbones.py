from __future__ import annotations

import pytest
import torch

from wsss.models.backbones import build_backbone


@pytest.mark.parametrize("name,stride,channels", [
    ("resnet18", 16, 512), ("resnet18", 8, 512), ("resnet18", 32, 512),
    ("resnet50", 16, 2048), ("resnet50", 8, 2048), ("vgg16", 8, 512),
])
def test_output_stride_and_channels(name: str, stride: int, channels: int) -> None:
    model = build_backbone(name, stride).eval()
    with torch.no_grad():
        feats = model(torch.zeros(1, 3, 64, 96))
    last = feats[model.last]
    assert last.shape == (1, channels, 64 // stride, 96 // stride)
    for key, value in feats.items():
        assert value.shape[1] == model.channels[key]
        assert value.shape[-1] == 96 // model.strides[key]


def test_frozen_stages_get_no_gradient() -> None:
    model = build_backbone("resnet18", 16, frozen_stages=2)
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert not any(p.requires_grad for p in model.layer1.parameters())
    assert all(p.requires_grad for p in model.layer2.parameters())


def test_state_dict_file_round_trip(tmp_path) -> None:
    source = build_backbone("resnet18", 16)
    # A torchvision-named state dict (conv1/bn1 at the top level), as users download it.
    state = {k.replace("stem.0.", "conv1.").replace("stem.1.", "bn1."): v for k, v in source.state_dict().items()}
    torch.save(state, tmp_path / "r18.pth")
    loaded = build_backbone("resnet18", 16, weights=str(tmp_path / "r18.pth"))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        build_backbone("resnet18", 16, weights=str(tmp_path / "nothere.pth"))
    with pytest.raises(ValueError, match="output_stride"):
        build_backbone("resnet50", 4)
    with pytest.raises(ValueError, match="unknown backbone.name"):
        build_backbone("resnet7", 16)


def test_imagenet_offline_fails_fast_with_instructions(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache: forces a download attempt

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="backbone.weights="):
        build_backbone("resnet18", 16, weights="imagenet")
