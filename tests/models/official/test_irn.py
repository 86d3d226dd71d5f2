"""IRN releases: our modules reproduce the official CAM network and IRNet outputs.

Fixtures come from ``scripts/make_official_fixtures.py irn <checkout of jiwoon-ahn/irn>``: the
official models filled from their tensor names, run on a fixed input. Tolerance 1e-4 (abs and
rel; float32, the same ops in a different order give ~1e-6).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss.methods.cam import CAMModule
from wsss.methods.irnet import IRNetModule
from wsss.models.official import CheckpointMismatchError, load_official
from wsss.models.official.fill import official_state_from_fixture

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "official"
TOL = {"rtol": 1e-4, "atol": 1e-4}
SGD = functools.partial(torch.optim.SGD, lr=0.1)


def fixture(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as data:
        return dict(data)


def backbone(dilate: bool = False) -> dict:
    return {"name": "resnet50", "output_stride": 16, "dilate": dilate}


@pytest.fixture(scope="module")
def cam_checkpoint(tmp_path_factory) -> tuple[Path, dict]:
    fx = fixture("irn_cam")
    path = tmp_path_factory.mktemp("irn") / "res50_cam.pth"
    torch.save(official_state_from_fixture(fx), path)
    return path, fx


def test_irn_cam_matches_official(cam_checkpoint) -> None:
    path, fx = cam_checkpoint
    model = load_official(CAMModule(backbone(), 20, SGD, 10, 0.9), path, "irn_cam").eval()
    image = torch.from_numpy(fx["image"])
    with torch.no_grad():
        torch.testing.assert_close(model(image), torch.from_numpy(fx["logits"]), **TOL)
        cams = F.relu(model.cam(torch.cat([image, image.flip(-1)])))
    torch.testing.assert_close(cams[0] + cams[1].flip(-1), torch.from_numpy(fx["cam"]), **TOL)


def test_irn_cam_dilated_backbone_differs_and_is_refused(cam_checkpoint) -> None:
    path, fx = cam_checkpoint
    model = CAMModule(backbone(dilate=True), 20, SGD, 10, 0.9)
    with pytest.raises(CheckpointMismatchError, match=r"dilate=false"):
        load_official(model, path, "irn_cam")
    # Same weights in the dilated (default) backbone: the CAMs really differ.
    for layer in model.backbone.layer4.modules():  # undilate, load, then dilate again
        if isinstance(layer, torch.nn.Conv2d) and layer.kernel_size == (3, 3):
            layer.dilation, layer.padding = (1, 1), (1, 1)
    load_official(model, path, "irn_cam")
    for layer in model.backbone.layer4.modules():
        if isinstance(layer, torch.nn.Conv2d) and layer.kernel_size == (3, 3):
            layer.dilation, layer.padding = (2, 2), (2, 2)
    image = torch.from_numpy(fx["image"])
    with torch.no_grad():
        cams = F.relu(model.eval().cam(torch.cat([image, image.flip(-1)])))
    assert (cams[0] + cams[1].flip(-1) - torch.from_numpy(fx["cam"])).abs().max() > 0.1


def test_irnet_matches_official(tmp_path) -> None:
    fx = fixture("irn_irn")
    path = tmp_path / "res50_irn.pth"
    state = official_state_from_fixture(fx)
    assert any(k.startswith("path_indices") for k in state)  # saved by train_irn, not loaded
    torch.save(state, path)
    model = IRNetModule(backbone(), SGD, 10, 0.9, official=True)
    load_official(model, path, "irn").eval()
    torch.testing.assert_close(model.mean_shift, state["mean_shift.running_mean"])
    image = torch.from_numpy(fx["image"])[0]
    crop = int(fx["crop_size"])
    batch = torch.stack([image, image.flip(-1)])
    with torch.no_grad():
        edge_raw, dp_raw = model(
            F.pad(batch, [0, crop - batch.shape[3], 0, crop - batch.shape[2]])
        )
    torch.testing.assert_close(edge_raw, torch.from_numpy(fx["edge_raw"]), **TOL)
    torch.testing.assert_close(dp_raw, torch.from_numpy(fx["dp_raw"]), **TOL)
    # The label stages' inference with IRN's zero padding = EdgeDisplacement.
    model.pad_to = crop
    edge, dp = model.edge_displacement(image)
    torch.testing.assert_close(edge[None], torch.from_numpy(fx["edge"]), **TOL)
    torch.testing.assert_close(dp, torch.from_numpy(fx["dp"]), **TOL)


def test_irnet_needs_official_head(tmp_path) -> None:
    path = tmp_path / "res50_irn.pth"
    torch.save({"fc_edge6.weight": torch.zeros(1, 160, 1, 1)}, path)
    with pytest.raises(CheckpointMismatchError, match="official=True"):
        load_official(IRNetModule(backbone(), SGD, 10, 0.9), path, "irn")
