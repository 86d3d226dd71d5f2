"""ToCo losses and online labels on hand-made inputs with known values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wsss.functional import toco as T


def test_ptc_loss_from_known_cosines() -> None:
    # 4 tokens on a 2x2 grid: t0 = t1 = e0, t2 = e1, t3 = (e0 + e1)/sqrt2
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    tokens = torch.stack([e0, e0, e1, (e0 + e1)]).T.reshape(1, 2, 2, 2)
    label = torch.tensor([[[1, 1], [2, 255]]])
    aff = T.label_to_aff_mask(label)
    assert aff.shape == (1, 4, 4)
    assert aff[0, 0, 1] == 1 and aff[0, 0, 2] == 0 and aff[0, 0, 0] == 255 and aff[0, 3, 0] == 255
    # positives: (0,1), (1,0): |cos| = 1; negatives: (0,2), (1,2) and transposes: |cos| = 0
    loss = T.masked_ptc_loss(tokens, aff)
    assert loss.item() == pytest.approx(0.5 * (1 - 2 / 3) + 0.5 * 0 / 5)
    # Flipping a negative pair to cos 1 raises the negative term: (0,2),(2,0) now cos 1
    tokens2 = torch.stack([e0, e0, e0, e1]).T.reshape(1, 2, 2, 2)
    assert T.masked_ptc_loss(tokens2, aff).item() == pytest.approx(0.5 * (1 - 2 / 3) + 0.5 * 4 / 5)


def test_ctc_loss_matches_the_formula() -> None:
    # 1 image, 3 views (2 global positives + 1 local negative), projections on the unit circle.
    b, temp = 1, 0.5
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # views 0, 1 global, 2 local
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    flags = torch.tensor([[1.0, 1.0, 0.0]])
    loss = T.ctc_loss(s, t, flags, temp)
    e = torch.exp(t @ s.T / temp)  # (2, 3)
    neg = e[:, 2]
    expected = (-torch.log(e[:, :2] / (e[:, :2] + neg[:, None] + 1e-4))).sum() - torch.log(1 / (1 + neg + 1e-4)).sum()
    expected = expected / 2 / (2 + 1e-4) / b
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # a negative view aligned with the teachers costs more than an opposite one
    s_bad = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    assert T.ctc_loss(s_bad, t, flags, temp) > loss


def test_balanced_seg_loss_uniform_logits_and_empty_parts() -> None:
    logits = torch.zeros(1, 3, 2, 2)
    label = torch.tensor([[[0, 1], [2, 255]]])
    assert T.balanced_seg_loss(logits, label).item() == pytest.approx(math.log(3))
    only_bg = torch.zeros(1, 2, 2, dtype=torch.long)
    assert T.balanced_seg_loss(logits, only_bg).item() == pytest.approx(0.5 * math.log(3))
    # foreground weighs as much as background whatever their pixel counts
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0] = 2.0
    label = torch.tensor([[[0, 0, 0, 1]]])
    bg = F.cross_entropy(logits[..., :3], label[..., :3])
    fg = F.cross_entropy(logits[..., 3:], label[..., 3:])
    assert T.balanced_seg_loss(logits, label).item() == pytest.approx(0.5 * (bg + fg).item())


def test_cam_to_label_thresholds_and_roi() -> None:
    cams = torch.tensor([[[[0.9, 0.6, 0.2, 0.1]], [[0.1, 0.3, 0.95, 0.0]]]])  # (1, 2, 1, 4)
    labels = torch.tensor([[1.0, 0.0]])  # class 1 absent: its 0.95 is masked out
    masked, label = T.cam_to_label(cams, labels, bkg_thre=0.5)
    assert label.tolist() == [[[1, 1, 0, 0]]] and masked[0, 1].abs().sum() == 0
    _, label = T.cam_to_label(cams, labels, 0.5, 0.7, 0.25, ignore_mid=True,
                              valid=torch.tensor([[[True, True, True, False]]]))
    assert label.tolist() == [[[1, 255, 0, 255]]]
    assert T.roi_mask(cams, labels, 0.25, 0.7).tolist() == [[[2, 1, 0, 0]]]


def test_local_crops_and_flags() -> None:
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float).view(2, 3, 8, 8)
    roi = torch.zeros(2, 8, 8, dtype=torch.long)
    roi[1] = 1  # image 1 entirely uncertain -> positive crops; image 0 confident bg -> negatives
    g = torch.Generator().manual_seed(0)
    crops, flags = T.crop_local_views(images, roi, num_crops=3, crop_size=4, generator=g)
    assert crops.shape == (3, 2, 3, 4, 4)
    assert flags.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    y, x = (images[0, 0] == crops[0, 0, 0, 0, 0]).nonzero()[0].tolist()
    assert torch.equal(crops[0, 0], images[0, :, y:y + 4, x:x + 4])
    with pytest.raises(ValueError, match="at least"):
        T.crop_local_views(images, roi, crop_size=16)


def test_refined_labels_keep_confident_regions() -> None:
    images = torch.full((1, 3, 16, 16), 0.5)
    images[..., 8:] = 0.9
    cams = torch.zeros(1, 2, 16, 16)
    cams[0, 0, :, 8:] = 1.0  # class 0 fills the right half
    labels = torch.tensor([[1.0, 0.0]])
    out = T.refine_cams_with_bkg(images, cams, labels, high_thre=0.7, low_thre=0.25, dilations=[1, 2], num_iter=3)
    assert out.shape == (1, 16, 16)
    assert (out[0, :, 10:] == 1).all() and (out[0, :, :6] == 0).all()
    assert set(out.unique().tolist()) <= {0, 1, 255}
