"""EPSModule wiring: background-last head, softmax CAMs, L = L_cls + L_sal."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from wsss.functional.eps import eps_saliency_loss
from wsss.methods.eps import EPSModule


def make(**kw) -> EPSModule:
    torch.manual_seed(0)
    opt = functools.partial(torch.optim.SGD, lr=0.1)
    backbone = {"name": "resnet18", "output_stride": 16, "weights": None}
    return EPSModule(backbone, 20, opt, 10.0, 0.9, **kw).eval()


def batch(saliency: bool = True) -> dict:
    g = torch.Generator().manual_seed(2)
    labels = torch.zeros(2, 20)
    labels[0, 1] = labels[1, [4, 9]] = 1
    out = {"image": torch.randn(2, 3, 64, 64, generator=g), "labels": labels}
    if saliency:
        out["saliency"] = torch.rand(2, 1, 64, 64, generator=g)
    return out


def test_cam_is_the_softmax_foreground_and_logits_skip_the_background() -> None:
    model = make()
    images = batch()["image"]
    with torch.no_grad():
        maps = model.class_maps(images)
        cams = model.cam(images)
        logits = model(images)
    assert maps.shape == (2, 21, 4, 4) and cams.shape == (2, 20, 4, 4)
    torch.testing.assert_close(cams, F.softmax(maps, 1)[:, :20])
    assert (cams.sum(1) < 1).all()  # the background channel (last) takes the rest
    torch.testing.assert_close(logits, maps.mean(dim=(2, 3))[:, :20])


def test_loss_is_classification_plus_saliency() -> None:
    model, data = make(tau=0.4, lam=0.5), batch()
    loss = model.training_step(data, 0)
    maps = model.class_maps(data["image"])
    expected = (F.multilabel_soft_margin_loss(maps.mean(dim=(2, 3))[:, :20], data["labels"])
                + eps_saliency_loss(maps, data["saliency"], data["labels"], tau=0.4, lam=0.5))
    torch.testing.assert_close(loss, expected)


def test_missing_saliency_names_the_setting() -> None:
    with pytest.raises(KeyError, match="saliency_dir"):
        make().training_step(batch(saliency=False), 0)


def test_datamodule_overrides_carry_the_saliency_dir() -> None:
    assert make(saliency_dir="SALImages").datamodule_overrides() == {"saliency_dir": "SALImages"}
    assert make(saliency_dir=None).datamodule_overrides() == {"saliency_dir": "SALImages"}
