"""PSA releases (ResNet-38): classifier and AffinityNet reproduce the official outputs.

Fixtures come from ``scripts/make_official_fixtures.py psa <checkout of jiwoon-ahn/psa>``.
Tolerance 1e-4 (abs and rel, float32).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss.functional.affinity import pairwise_affinity
from wsss.functional.random_walk import propagate, transition_matrix
from wsss.methods.affinitynet import AffinityNetModule
from wsss.methods.cam import CAMModule
from wsss.models.official import FORMATS, CheckpointMismatchError, load_official
from wsss.models.official.fill import official_state_from_fixture

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "official"
TOL = {"rtol": 1e-4, "atol": 1e-4}
SGD = functools.partial(torch.optim.SGD, lr=0.1)
RESNET38 = {"name": "resnet38", "output_stride": 8}


def fixture(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as data:
        return dict(data)


def release(name: str) -> tuple[dict, dict]:
    """(official state dict, fixture); loaded in memory (the ResNet-38 file would be ~0.5 GB;
    reading files is tested on small ones below)."""
    fx = fixture(name)
    return official_state_from_fixture(fx), fx


def test_psa_classifier_matches_official() -> None:
    state, fx = release("psa_cls")
    model = FORMATS["psa"](CAMModule(RESNET38, 20, SGD, 10, 0.9), state, "res38_cls.pth").eval()
    image = torch.from_numpy(fx["image"])
    with torch.no_grad():
        torch.testing.assert_close(model(image), torch.from_numpy(fx["logits"]), **TOL)
        torch.testing.assert_close(F.relu(model.cam(image)), torch.from_numpy(fx["cam"]), **TOL)


def test_psa_affinitynet_and_walk_match_official() -> None:
    state, fx = release("psa_aff")
    model = AffinityNetModule(RESNET38, ["conv4", "conv5", "conv6"], [64, 128, 256], SGD, 10, 0.9)
    # A classifier file given as psa_aff: every leftover is named, on both sides.
    wrong = {k: v for k, v in state.items() if not k.startswith("f")} | {
        "fc8.weight": torch.zeros(20, 4096, 1, 1)
    }
    with pytest.raises(
        CheckpointMismatchError,
        match=r"(?s)res38_cls.pth .*official tensors not used \(1\): fc8.weight"
        r".*module tensors not set \(4\): branches.0.weight",
    ):
        FORMATS["psa_aff"](model, wrong, "res38_cls.pth")
    FORMATS["psa_aff"](model, state, "res38_aff.pth").eval()
    with torch.no_grad():
        features = model(torch.from_numpy(fx["image"]))
    radius, pad = 5, 4
    height, width = features.shape[-2:]
    aff = pairwise_affinity(features, radius)
    # PSA's pairs: sources cropped to rows [0, h - 4) and columns [4, w - 4), raster order.
    ours = aff[:, :, : height - pad, pad : width - pad].flatten(2)
    torch.testing.assert_close(ours, torch.from_numpy(fx["aff"]), **TOL)
    beta, logt = int(fx["beta"]), int(fx["logt"])
    seeds, expected = torch.from_numpy(fx["seeds"]), torch.from_numpy(fx["walk"])
    walk = propagate(seeds, transition_matrix(aff[0], radius, beta, sources="psa"), 2**logt)
    torch.testing.assert_close(walk, expected, **TOL)
    # Our default keeps the border sources: a different walk on the same affinities.
    default = propagate(seeds, transition_matrix(aff[0], radius, beta), 2**logt)
    assert (default - expected).abs().max() > 1e-3


def test_truncated_and_foreign_files_name_the_file(tmp_path) -> None:
    good = tmp_path / "good.pth"
    torch.save({"fc8.weight": torch.zeros(20, 4096, 1, 1)}, good)
    truncated = tmp_path / "res38_cls.pth"
    truncated.write_bytes(good.read_bytes()[:200])
    model = CAMModule(RESNET38, 20, SGD, 10, 0.9)
    with pytest.raises(
        CheckpointMismatchError, match=r"res38_cls.pth: not a readable PyTorch checkpoint"
    ):
        load_official(model, truncated, "psa")
    foreign = tmp_path / "weights.params"
    foreign.write_bytes(b"\x12\x01\x00\x00MXNet" + bytes(64))
    with pytest.raises(CheckpointMismatchError, match=r"weights.params: not a readable"):
        load_official(model, foreign, "psa")
    with pytest.raises(
        CheckpointMismatchError, match=r"module tensors not set \(\d+\): backbone.conv1a"
    ):
        load_official(model, good, "psa")
    with pytest.raises(ValueError, match="unknown checkpoint_format 'deeplab'"):
        load_official(model, good, "deeplab")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_official(model, tmp_path / "missing.pth", "psa")
