"""OAA and SEC releases (VGG-16): our modules reproduce the official forwards.

Fixtures: ``scripts/make_official_fixtures.py oaa|sec <checkout>``. Tolerance 1e-4 (abs and
rel, float32).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.methods.oaa import OAAModule
from wsss.methods.sec import SECModule
from wsss.models.official import FORMATS, CheckpointMismatchError, load_official
from wsss.models.official.fill import official_state_from_fixture

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "official"
TOL = {"rtol": 1e-4, "atol": 1e-4}
SGD = functools.partial(torch.optim.SGD, lr=0.1)


def release(name: str) -> tuple[dict, dict]:
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as data:
        fx = dict(data)
    return official_state_from_fixture(fx), fx


def test_oaa_matches_official(tmp_path) -> None:
    state, fx = release("oaa")
    path = tmp_path / "oaa.pth"
    torch.save(state, path)
    model = OAAModule({"name": "vgg16", "output_stride": 8}, 20, SGD, 10, 0.9, accumulate=False)
    load_official(model, path, "oaa").eval()
    image = torch.from_numpy(fx["image"])
    with torch.no_grad():
        torch.testing.assert_close(model(image), torch.from_numpy(fx["logits"]), **TOL)
        torch.testing.assert_close(model.class_maps(image), torch.from_numpy(fx["maps"]), **TOL)


def test_sec_matches_official_with_deeplab_pools() -> None:
    state, fx = release("sec")
    backbone = {"name": "vgg16", "output_stride": 8}
    with pytest.raises(CheckpointMismatchError, match="deeplab_pools"):
        FORMATS["sec"](SECModule(backbone, 20, SGD, 10, 0.9), state, "sec.pth")
    model = SECModule(backbone | {"deeplab_pools": True}, 20, SGD, 10, 0.9)
    FORMATS["sec"](model, state, "sec.pth").eval()
    with torch.no_grad():
        scores = model.scores(torch.from_numpy(fx["image"]))
    torch.testing.assert_close(scores, torch.from_numpy(fx["scores"]), **TOL)
