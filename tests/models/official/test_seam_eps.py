"""SEAM and EPS releases (ResNet-38): our modules reproduce the official forwards.

Fixtures: ``scripts/make_official_fixtures.py seam|eps <checkout>``. Tolerance 1e-4 (abs and
rel, float32). States are loaded in memory (the ResNet-38 files would be ~0.5 GB).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wsss.methods.eps import EPSModule
from wsss.methods.seam import SEAMModule
from wsss.models.official import FORMATS
from wsss.models.official.fill import official_state_from_fixture

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "official"
TOL = {"rtol": 1e-4, "atol": 1e-4}
SGD = functools.partial(torch.optim.SGD, lr=0.1)
RESNET38 = {"name": "resnet38", "output_stride": 8}


def release(name: str) -> tuple[dict, dict]:
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as data:
        fx = dict(data)
    return official_state_from_fixture(fx), fx


def test_seam_matches_official() -> None:
    state, fx = release("seam")
    model = FORMATS["seam"](
        SEAMModule(RESNET38, 20, SGD, 10, 0.9), state, "resnet38_SEAM.pth"
    ).eval()
    image = torch.from_numpy(fx["image"])
    with torch.no_grad():
        cam, rv = model.maps(image)
    size = image.shape[-2:]
    up = functools.partial(F.interpolate, size=size, mode="bilinear", align_corners=True)
    torch.testing.assert_close(up(cam), torch.from_numpy(fx["cam"]), **TOL)
    torch.testing.assert_close(up(rv), torch.from_numpy(fx["cam_rv"]), **TOL)


def test_eps_matches_official() -> None:
    state, fx = release("eps")
    model = FORMATS["eps"](
        EPSModule(RESNET38, 20, SGD, 10, 0.9, tau=0.4, lam=0.5), state, "eps.pth"
    ).eval()
    image = torch.from_numpy(fx["image"])
    with torch.no_grad():
        torch.testing.assert_close(model.class_maps(image), torch.from_numpy(fx["cam"]), **TOL)
        torch.testing.assert_close(model.cam(image), torch.from_numpy(fx["fg"]), **TOL)
        torch.testing.assert_close(model(image), torch.from_numpy(fx["pred"])[:, :20], **TOL)
