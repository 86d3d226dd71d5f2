"""make_cam's ``resize=pil_bicubic`` (+ ``upsample=irn``) reproduce PSA's ``infer_cls.py`` and
IRN's ``step/make_cam.py``.

Fixtures: ``scripts/make_official_fixtures.py irn_make_cam <checkout of jiwoon-ahn/irn>`` runs
IRN's own ``_work`` loop (their dataset class: PIL-bicubic scales, their normalisation and
flips; their CAM network filled from its tensor names) on a 45 x 61 uint8 image and stores the
strided (stride 4) and high-res CAMs; ``... psa_vgg <checkout of jiwoon-ahn/psa>`` runs PSA's
``VOC12ClsDatasetMSF`` and ``infer_cls.py``'s per-pass loop with its VGG-16 classifier.
Tolerance 1e-4 (abs and rel, float32).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.io import load_npz
from wsss.methods.cam import CAMModule
from wsss.models.official import FORMATS
from wsss.models.official.fill import official_state_from_fixture
from wsss.models.official.psa import PSA_VGG_MEAN, PSA_VGG_STD
from wsss.pipeline.cam_inference import CAMInference, CAMWriter

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official"
TOL = {"rtol": 1e-4, "atol": 1e-4}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def irn() -> tuple[CAMModule, dict, dict]:
    with np.load(FIXTURES / "irn_make_cam.npz", allow_pickle=False) as data:
        fx = dict(data)
    backbone = {"name": "resnet50", "output_stride": 16, "dilate": False}
    model = CAMModule(backbone, 20, functools.partial(torch.optim.SGD, lr=0.1), 10, 0.9)
    FORMATS["irn_cam"](model, official_state_from_fixture(fx), "res50_cam.pth").eval()
    raw = torch.from_numpy(fx["image"])
    image = (raw.permute(2, 0, 1).float() / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    batch = {"name": ["2007_000032"], "image": image[None], "raw": raw[None],
             "labels": torch.from_numpy(fx["label"])[None]}  # fmt: skip
    return model, fx, batch


def test_pil_bicubic_irn_sizes_match_irn_make_cam(irn, tmp_path) -> None:
    model, fx, batch = irn
    scales = [float(s) for s in fx["scales"]]
    inference = CAMInference(model, scales, True, resize="pil_bicubic", upsample="irn", mean=MEAN, std=STD)
    with torch.no_grad():
        (item,) = inference.predict_step(batch, 0)
    np.testing.assert_array_equal(item["keys"].numpy(), fx["cam_keys"])
    assert item["strided"].shape == (2, 12, 16) and item["cams"].shape == (2, 45, 61)
    torch.testing.assert_close(item["strided"], torch.from_numpy(fx["strided"]), **TOL)
    torch.testing.assert_close(item["cams"], torch.from_numpy(fx["high_res"]), **TOL)
    # The stage's writer stores both; the IRN label stages walk `strided`.
    CAMWriter(tmp_path).write_on_batch_end(None, None, [item], None, None, 0)
    saved = load_npz(tmp_path / "2007_000032.npz")
    assert sorted(saved) == ["cams", "keys", "strided"]
    # Our default (bilinear tensor resize, CAMs straight to the image size) is measurably off.
    with torch.no_grad():
        (ours,) = CAMInference(model, scales, True).predict_step(batch, 0)
    assert (ours["cams"] - torch.from_numpy(fx["high_res"])).abs().max() > 1e-2
    # PIL inputs alone (PSA's infer_cls.py sizes) differ from IRN's high-res only by the resizing.
    with torch.no_grad():
        (psa,) = CAMInference(model, scales, True, resize="pil_bicubic", mean=MEAN, std=STD).predict_step(batch, 0)
    assert "strided" not in psa and psa["cams"].shape == (2, 45, 61)


def fixture(name: str) -> dict:
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as data:
        return dict(data)


def test_pil_bicubic_matches_psa_infer_cls_with_the_vgg16_release() -> None:
    fx, weights = fixture("psa_vgg_make_cam"), fixture("psa_vgg_cls")
    backbone = {"name": "vgg16", "output_stride": 8, "deeplab_pools": True, "fc6_dilation": 1,
                "mean": PSA_VGG_MEAN, "std": PSA_VGG_STD}  # fmt: skip
    model = CAMModule(backbone, 20, functools.partial(torch.optim.SGD, lr=0.1), 10, 0.9, sqrt_cam=True)
    FORMATS["psa_vgg"](model, official_state_from_fixture(weights), "vgg16_cls.pth").eval()
    raw = torch.from_numpy(fx["image"])
    mean, std = torch.tensor(PSA_VGG_MEAN).view(3, 1, 1), torch.tensor(PSA_VGG_STD).view(3, 1, 1)
    batch = {"name": ["a"], "image": ((raw.permute(2, 0, 1).float() / 255 - mean) / std)[None],
             "raw": raw[None], "labels": torch.from_numpy(fx["label"])[None]}  # fmt: skip
    scales = [float(s) for s in fx["scales"]]
    inference = CAMInference(model, scales, True, resize="pil_bicubic", mean=PSA_VGG_MEAN, std=PSA_VGG_STD)
    with torch.no_grad():
        (item,) = inference.predict_step(batch, 0)
        (ours,) = CAMInference(model, scales, True).predict_step(batch, 0)
    np.testing.assert_array_equal(item["keys"].numpy(), fx["cam_keys"])
    torch.testing.assert_close(item["cams"], torch.from_numpy(fx["cams"]), **TOL)
    assert (ours["cams"] - torch.from_numpy(fx["cams"])).abs().max() > 1e-2  # the default differs


def test_bad_resize_options_name_the_key(irn) -> None:
    model = irn[0]
    with pytest.raises(ValueError, match=r"stages.make_cam.resize must be one of"):
        CAMInference(model, [1.0], True, resize="bicubic")
    with pytest.raises(ValueError, match=r"stages.make_cam.upsample must be one of"):
        CAMInference(model, [1.0], True, upsample="strided")
    with pytest.raises(ValueError, match=r"stages.make_cam.flip=true"):
        CAMInference(model, [1.0], False, upsample="irn")
