"""ViT backbones: the backbone contract on a 2-block random ViT, weight files, offline errors."""

from __future__ import annotations

import pytest
import torch

from wsss.models.vit import build_vit

TINY = {"name": "custom", "model_kwargs": {"patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}}


def test_levels_are_stride_16_patch_grids_with_class_token() -> None:
    net = build_vit(**TINY, aux_layers=[-2]).eval()
    assert list(net.levels.items()) == [("block0", (64, 16)), ("tokens", (64, 16))]  # shallow first
    assert net.last == "tokens" and net.out_channels == 64
    out = net(torch.randn(2, 3, 64, 96))
    assert out["tokens"].shape == (2, 64, 4, 6) and out["block0"].shape == (2, 64, 4, 6)
    assert out["cls"].shape == (2, 64)
    # Any input size: position embeddings are interpolated, the image padded to whole patches.
    assert net(torch.randn(1, 3, 50, 130))["tokens"].shape == (1, 64, 4, 9)


def test_final_tokens_are_layer_normed_and_aux_tokens_are_raw() -> None:
    net = build_vit(**TINY, aux_layers=[0]).eval()
    out = net(torch.randn(1, 3, 32, 32))
    tokens = out["tokens"].flatten(2).transpose(1, 2)  # (1, 4, 64)
    norm = net.model.norm
    # LayerNorm output: zero mean per token (affine weight 1, bias 0 at init)
    assert torch.allclose(tokens.mean(-1), torch.zeros(1, 4), atol=1e-5)
    assert not torch.allclose(out["block0"].mean(1), torch.zeros(1, 2, 2), atol=1e-3)
    assert norm.weight.shape == (64,)


def test_weights_file_round_trip_and_bad_files(tmp_path) -> None:
    net = build_vit(**TINY)
    path = tmp_path / "vit.pth"
    torch.save({"model": net.model.state_dict()}, path)  # DeiT-style wrapping
    other = build_vit(**TINY, weights=str(path))
    for key, value in net.model.state_dict().items():
        assert torch.equal(value, other.model.state_dict()[key]), key
    with pytest.raises(FileNotFoundError, match="backbone.weights"):
        build_vit(**TINY, weights=str(tmp_path / "missing.pth"))
    torch.save({"blocks.0.nope": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(KeyError, match="does not fit"):
        build_vit(**TINY, weights=str(tmp_path / "bad.pth"))


def test_offline_pretrained_names_what_to_download(monkeypatch) -> None:
    import timm

    def offline(*args, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("no internet")
        raise AssertionError("unexpected")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match=r"timm/vit_base_patch16_224\.orig_in21k_ft_in1k.*backbone\.weights"):
        build_vit("vit_base_patch16_224.orig_in21k_ft_in1k", weights="timm")


def test_bad_aux_layer_and_unknown_keys_are_rejected() -> None:
    with pytest.raises(ValueError, match="aux_layers"):
        build_vit(**TINY, aux_layers=[5])
    with pytest.raises(TypeError, match="unknown backbone keys"):
        build_vit(**TINY, colour="red")
