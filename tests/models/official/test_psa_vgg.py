"""PSA releases (VGG-16): classifier and AffinityNet reproduce the official outputs.

Fixtures come from ``scripts/make_official_fixtures.py psa_vgg <checkout of jiwoon-ahn/psa>``:
``vgg16_cls`` / ``vgg16_aff`` filled from their tensor names, run on a fixed input in vgg16d's
space (BGR, Caffe mean subtracted); our loaders reorder conv1_1 to RGB, so we feed the same
image with its channels reversed. Tolerance 1e-4 (abs and rel, float32).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.functional.affinity import pairwise_affinity
from wsss.functional.random_walk import propagate, transition_matrix
from wsss.methods.affinitynet import AffinityNetModule
from wsss.methods.cam import CAMModule
from wsss.models.official import FORMATS, CheckpointMismatchError, load_official
from wsss.models.official.fill import official_state_from_fixture
from wsss.models.official.psa import PSA_VGG_MEAN, PSA_VGG_STD

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "official"
TOL = {"rtol": 1e-4, "atol": 1e-4}
SGD = functools.partial(torch.optim.SGD, lr=0.1)


def vgg16d(fc6_dilation: int, **extra) -> dict:
    return {"name": "vgg16", "output_stride": 8, "deeplab_pools": True,
            "fc6_dilation": fc6_dilation, "mean": PSA_VGG_MEAN, "std": PSA_VGG_STD} | extra  # fmt: skip


def release(name: str) -> tuple[dict, dict]:
    """(official state dict, fixture), in memory (reading files is tested on a small one below)."""
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as data:
        fx = dict(data)
    return official_state_from_fixture(fx), fx


def test_psa_vgg_classifier_matches_official() -> None:
    state, fx = release("psa_vgg_cls")
    model = CAMModule(vgg16d(1), 20, SGD, 10, 0.9)
    with pytest.raises(CheckpointMismatchError, match=r"sqrt_cam=true"):
        FORMATS["psa_vgg"](model, state, "vgg16_cls.pth")
    model.sqrt_cam = True
    model.backbone.mean, model.backbone.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    with pytest.raises(CheckpointMismatchError, match=r"Caffe-mean.*backbone.mean"):
        FORMATS["psa_vgg"](model, state, "vgg16_cls.pth")
    model.backbone.mean, model.backbone.std = PSA_VGG_MEAN, PSA_VGG_STD
    FORMATS["psa_vgg"](model, state, "vgg16_cls.pth").eval()
    image = torch.from_numpy(fx["image"]).flip(1)  # BGR -> RGB
    with torch.no_grad():
        logits, cam = model(image), model.cam(image)
    torch.testing.assert_close(logits, torch.from_numpy(fx["logits"]), **TOL)
    # sqrt's slope near 0 amplifies float32 rounding (measured max 2.6e-5 here); its argument,
    # relu(fc8), is compared too.
    torch.testing.assert_close(cam, torch.from_numpy(fx["cam"]), **TOL)
    torch.testing.assert_close(cam**2, torch.from_numpy(fx["cam"]) ** 2, **TOL)
    assert cam.shape[-2:] == (8, 10) and cam.max() > 0.1  # stride 8, non-trivial maps
    # The classifier's weights as an AffinityNet: refused by the architecture check.
    with pytest.raises(CheckpointMismatchError, match=r"psa_aff_vgg.*needs PSA's vgg16d.*fc6_dilation=4"):
        FORMATS["psa_aff_vgg"](model, state, "vgg16_cls.pth")


def test_psa_vgg_affinitynet_and_walk_match_official() -> None:
    state, fx = release("psa_vgg_aff")
    model = AffinityNetModule(vgg16d(4), ["conv4", "conv5", "fc7"], [64, 128, 256], SGD, 10, 0.9,
                              branch_norm_groups=[8, 16, 32])  # fmt: skip
    norms, model.branch_norms = model.branch_norms, None
    with pytest.raises(CheckpointMismatchError, match=r"branch_norm_groups=\[8, 16, 32\]"):
        FORMATS["psa_aff_vgg"](model, state, "vgg16_aff.pth")
    model.branch_norms = norms
    # A file lacking the head: every leftover is named.
    trunk = {k: v for k, v in state.items() if not k.startswith(("f8", "gn8", "f9"))}
    with pytest.raises(CheckpointMismatchError,
                       match=r"(?s)vgg16_cls.pth .*not used \(1\): fc8.weight.*module tensors not set \(\d+\): branches.0.weight"):  # fmt: skip
        FORMATS["psa_aff_vgg"](model, trunk | {"fc8.weight": torch.zeros(20, 1024, 1, 1)}, "vgg16_cls.pth")
    FORMATS["psa_aff_vgg"](model, state, "vgg16_aff.pth").eval()
    with torch.no_grad():
        features = model(torch.from_numpy(fx["image"]).flip(1))
    radius, pad = 5, 4
    height, width = features.shape[-2:]
    aff = pairwise_affinity(features, radius)
    ours = aff[:, :, : height - pad, pad : width - pad].flatten(2)  # PSA's pair layout
    torch.testing.assert_close(ours, torch.from_numpy(fx["aff"]), **TOL)
    beta, logt = int(fx["beta"]), int(fx["logt"])
    seeds = torch.from_numpy(fx["seeds"])
    walk = propagate(seeds, transition_matrix(aff[0], radius, beta, sources="psa"), 2**logt)
    torch.testing.assert_close(walk, torch.from_numpy(fx["walk"]), **TOL)


def test_truncated_psa_vgg_file_names_the_file(tmp_path) -> None:
    good = tmp_path / "good.pth"
    torch.save({"fc8.weight": torch.zeros(20, 1024, 1, 1)}, good)
    truncated = tmp_path / "vgg16_cls.pth"
    truncated.write_bytes(good.read_bytes()[:200])
    model = CAMModule(vgg16d(1), 20, SGD, 10, 0.9, sqrt_cam=True)
    with pytest.raises(CheckpointMismatchError, match=r"vgg16_cls.pth: not a readable PyTorch checkpoint"):
        load_official(model, truncated, "psa_vgg")
    with pytest.raises(CheckpointMismatchError, match=r"(?s)good.pth .*module tensors not set \(\d+\): backbone.conv3.0"):
        load_official(model, good, "psa_vgg")
