"""SEAMModule wiring: shapes, the PCM inputs, and the loss composition."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from wsss.functional.seam import adaptive_min_pooling_loss
from wsss.methods.seam import SEAMModule, default_pcm_layers
from wsss.models.backbones import build_backbone

BACKBONE = {"name": "resnet18", "output_stride": 16, "weights": None}


def make(**kw) -> SEAMModule:
    torch.manual_seed(0)
    opt = functools.partial(torch.optim.SGD, lr=0.1)
    return SEAMModule(BACKBONE, 20, opt, 10.0, 0.9, **kw)


def batch() -> dict:
    g = torch.Generator().manual_seed(1)
    labels = torch.zeros(2, 20)
    labels[0, 3] = labels[1, [5, 7]] = 1
    return {"image": torch.randn(2, 3, 64, 64, generator=g), "labels": labels}


def test_default_pcm_layers_follow_the_backbone() -> None:
    assert default_pcm_layers(build_backbone("resnet18", 16)) == ["layer2", "layer3"]
    assert default_pcm_layers(build_backbone("vgg16", 8)) == ["conv3", "conv4"]


def test_shapes_and_non_negative_pcm_cams() -> None:
    model = make().eval()
    images = batch()["image"]
    with torch.no_grad():
        cam, rv = model.maps(images)
        logits, cams = model(images), model.cam(images)
    assert cam.shape == rv.shape == (2, 21, 4, 4)
    assert logits.shape == (2, 20) and cams.shape == (2, 20, 4, 4)
    assert (cams >= 0).all() and torch.equal(cams, rv[:, 1:])
    torch.testing.assert_close(logits, cam.mean(dim=(2, 3))[:, 1:])


def test_min_pool_flag_adds_exactly_the_rvmin_term() -> None:
    data = batch()
    with_term = make(dropout=0.0, min_pool_loss=True).eval()  # eval: BN fixed, deterministic
    without = make(dropout=0.0, min_pool_loss=False).eval()
    diff = with_term.training_step(data, 0) - without.training_step(data, 0)
    img2 = F.interpolate(data["image"], scale_factor=0.3, mode="bilinear", align_corners=True)
    terms = []
    for img in (data["image"], img2):
        rv = F.interpolate(with_term.maps(img)[1], img.shape[-2:], mode="bilinear",
                           align_corners=True)
        terms.append(adaptive_min_pooling_loss(rv, data["labels"]))
    torch.testing.assert_close(diff, 0.5 * (terms[0] + terms[1]), rtol=1e-4, atol=1e-6)


def test_gradients_reach_new_layers_but_pcm_does_not_train_the_backbone_stages() -> None:
    model = make(dropout=0.0).train()
    model.training_step(batch(), 0).backward()
    assert model.pcm_fuse.weight.grad.abs().sum() > 0
    assert all(p.grad.abs().sum() > 0 for p in model.pcm_proj.parameters())
    assert model.classifier.weight.grad[1:].abs().sum() > 0
    assert {id(p) for p in model.new_parameters()}.isdisjoint(
        id(p) for p in model.backbone.parameters())


def test_mismatched_pcm_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="same length"):
        make(pcm_layers=["layer3"], pcm_channels=[64, 128])
