import math

import numpy as np
import torch

from wsss.functional.irn import (
    instance_centroids,
    instance_masks_from_walk,
    instances_from_displacement,
    irn_losses,
    irn_total_loss,
)


def _two_centre_field(gain: float = 1.0) -> torch.Tensor:
    """8x24 field: columns < 12 point to (3, 3), the others to (4, 18); D = gain * (c - p)."""
    ys, xs = torch.meshgrid(torch.arange(8).float(), torch.arange(24).float(), indexing="ij")
    cy = torch.where(xs < 12, torch.tensor(3.0), torch.tensor(4.0))
    cx = torch.where(xs < 12, torch.tensor(3.0), torch.tensor(18.0))
    return torch.stack([cy - ys, cx - xs]) * gain


def test_irn_losses_hand_computed() -> None:
    # 1x2 map, radius 2: one pair, offset (0, 1). B = (0.5, 0) -> a = 0.5.
    boundary = torch.tensor([0.5, 0.0]).view(1, 1, 1, 2)
    disp = torch.tensor([[1.0, 0.0], [2.0, 0.0]]).view(1, 2, 1, 2)  # D_0 = (1, 2), D_1 = (0, 0)
    fg = irn_losses(boundary, disp, torch.tensor([[[3, 3]]]), radius=2)
    # fg+: |(1 - 0) - 0| + |(2 - 0) - 1| = 2 over 2 * 1 pair.
    assert math.isclose(fg["dp_fg"].item(), 2 / (2 + 1e-5), rel_tol=1e-6)
    assert fg["dp_bg"].item() == 0 and fg["neg"].item() == 0
    assert math.isclose(fg["pos"].item(), -math.log(0.5 + 1e-5) / (1 + 1e-5) / 2, rel_tol=1e-6)
    bg = irn_losses(boundary, disp, torch.tensor([[[0, 0]]]), radius=2)
    assert math.isclose(bg["dp_bg"].item(), 3 / (2 + 1e-5), rel_tol=1e-6)  # |1| + |2|
    neg = irn_losses(boundary, disp, torch.tensor([[[0, 3]]]), radius=2)
    assert math.isclose(neg["neg"].item(), -math.log(0.5 + 1e-5) / (1 + 1e-5), rel_tol=1e-6)
    total = irn_total_loss(fg)
    assert math.isclose(total.item(), (fg["pos"].item() + fg["dp_fg"].item()) / 2, rel_tol=1e-6)


def test_displacement_losses_zero_at_common_centroid() -> None:
    label = torch.zeros(1, 8, 24, dtype=torch.long)
    label[0, 1:6, 1:7] = 4
    label[0, 2:7, 13:21] = 7
    label[0, 0, 10:] = 255
    disp = _two_centre_field().unsqueeze(0) * (label > 0)  # background displacement 0
    losses = irn_losses(torch.zeros(1, 1, 8, 24), disp, label, radius=4)
    assert losses["dp_fg"].item() < 1e-6 and losses["dp_bg"].item() < 1e-6
    # No boundary: a = 1 everywhere, pos ~ 0 and neg ~ -log(1e-5) (float32 rounding of 1 + 1e-5).
    assert abs(losses["pos"].item()) < 1e-4
    assert math.isclose(losses["neg"].item(), -math.log(1e-5), rel_tol=1e-3)


def test_irn_losses_gradient() -> None:
    logits = torch.randn(2, 1, 9, 10, requires_grad=True)
    disp = torch.randn(2, 2, 9, 10, requires_grad=True)
    label = torch.randint(0, 3, (2, 9, 10))
    total = irn_total_loss(irn_losses(torch.sigmoid(logits), disp, label, radius=5))
    total.backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(disp.grad).all()


def test_centroids_converge_to_two_centres() -> None:
    disp = _two_centre_field(gain=0.5)  # halves the distance to the centre each step
    cent = instance_centroids(disp, n_iter=100)
    assert torch.all(cent[:, :, :12] == torch.tensor([3, 3]).view(2, 1, 1))
    assert torch.all(cent[:, :, 12:] == torch.tensor([4, 18]).view(2, 1, 1))
    # Weak regions (distance < 5 from a centre) are two separate disks -> two instances.
    inst = instances_from_displacement(disp, n_iter=100)
    assert inst.dtype == torch.long
    assert torch.all(inst[:, :12] == 0) and torch.all(inst[:, 12:] == 1)


def test_unassigned_pixels_form_one_instance() -> None:
    disp = torch.zeros(2, 3, 10)
    disp[1] = 5.0  # |D| = 5 everywhere: no weak region, every centroid is "none"
    assert torch.all(instance_centroids(disp, n_iter=5)[1] == 9)  # clipped to the border
    assert torch.all(instances_from_displacement(disp, n_iter=5) == 0)


def test_instance_masks_from_walk() -> None:
    boundary = torch.zeros(8, 8)
    boundary[:, 4] = 1.0
    inst = torch.zeros(8, 8, dtype=torch.long)
    inst[:, 4:] = 1
    cams = torch.zeros(1, 8, 8)
    cams[0, 2:6, 0:4] = 1.0
    cams[0, 2:6, 5:8] = 0.5
    out = instance_masks_from_walk(cams, torch.tensor([14]), boundary, inst, (32, 30))
    assert out["masks"].shape == (2, 32, 30) and out["masks"].dtype == bool
    assert out["classes"].tolist() == [14, 14] and out["classes"].dtype == np.int64
    assert out["scores"].dtype == np.float32
    assert math.isclose(out["scores"].max(), 1.0, rel_tol=1e-5)
    assert 0 < out["scores"].min() < 1
    assert not (out["masks"][0] & out["masks"][1]).any()
    assert out["masks"][0][:, :14].mean() > 0.9 and not out["masks"][0][:, 18:].any()
    # Fragments under the area ratio keep their mask but score 0.
    tiny = instance_masks_from_walk(
        cams, torch.tensor([14]), boundary, inst, (32, 30), min_fragment_ratio=0.9
    )
    assert tiny["masks"].shape[0] == 2 and np.all(tiny["scores"] == 0)
    empty = instance_masks_from_walk(
        torch.zeros(1, 8, 8), torch.tensor([3]), boundary, inst, (32, 32)
    )
    assert empty["masks"].shape == (0, 32, 32) and empty["scores"].shape == (0,)
