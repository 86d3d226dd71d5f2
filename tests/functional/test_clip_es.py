"""CLIP-ES maths on hand-made inputs: Grad-CAM, boxes, attention affinity, CGL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss.functional import clip_es as C


def test_grad_cam_weights_channels_by_mean_gradient() -> None:
    acts = torch.zeros(2, 2, 2)
    acts[0] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    acts[1] = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    grads = torch.stack([torch.full((2, 2), 1.0), torch.full((2, 2), -1.0)])
    cam = C.grad_cam(acts, grads)  # 1*a0 - 1*a1 = [[1, -2], [0, 0]] -> relu -> /max
    assert torch.allclose(cam, torch.tensor([[1.0, 0.0], [0.0, 0.0]]), atol=1e-6)
    assert torch.equal(C.grad_cam(acts, -grads.abs() * 0), torch.zeros(2, 2))


def test_box_mask_covers_each_region_and_stops_short_of_the_far_border() -> None:
    cam = np.zeros((10, 10), dtype=np.float32)
    cam[1:3, 1:4] = 1.0  # region A
    cam[6:10, 6:10] = 0.5  # region B touches the bottom-right border
    cam[5, 0] = 0.3  # below 0.4 x max: no box
    mask = C.box_mask(cam, 0.4)
    assert mask[1:3, 1:4].all() and mask[:, :1].sum() == 0
    assert mask[6:9, 6:9].all() and mask[9].sum() == 0 and mask[:, 9].sum() == 0  # CLIP-ES: x1 = min(x+w, W-1)
    assert mask.sum() == 6 + 9
    assert C.box_mask(np.zeros((4, 4)), 0.4).sum() == 0


def test_attention_affinity_is_symmetric_and_propagates_inside_boxes() -> None:
    torch.manual_seed(0)
    attn = torch.rand(9, 9) + torch.eye(9) * 5
    aff = C.attention_affinity(attn)
    assert torch.allclose(aff, aff.T, atol=1e-6)
    assert torch.allclose(aff.sum(dim=1), torch.ones(9), atol=0.05)  # ~doubly stochastic, squared
    cam = torch.zeros(3, 3)
    cam[0, 0] = 1.0
    refined = C.caa_refine(cam, aff, 0.4)
    # box = pixel (0,0) alone -> refined = column 0 of the affinity
    assert torch.allclose(refined.flatten(), aff[:, 0], atol=1e-6)
    assert C.caa_refine(torch.zeros(3, 3), aff).abs().sum() == 0


def test_background_and_confidence_guided_labels() -> None:
    cams = np.array([[[0.9, 0.2]], [[0.1, 0.3]]], dtype=np.float32)  # (2, 1, 2)
    bg = C.background_score(cams)
    assert np.allclose(bg, [[[0.1, 0.7]]])
    assert np.allclose(C.background_score(cams, 2.0), [[[0.01, 0.49]]])
    assert C.background_score(np.zeros((0, 1, 2), np.float32)).tolist() == [[[1.0, 1.0]]]
    probs = np.array([[[0.02, 0.6]], [[0.97, 0.1]], [[0.01, 0.3]]])
    label, plain = C.confidence_guided_label(probs, np.array([4, 11]), 0.95)
    assert plain.tolist() == [[5, 0]] and label.tolist() == [[5, 255]]
    assert label.dtype == np.uint8
    with pytest.raises(ValueError, match="background \\+ 1 keys"):
        C.confidence_guided_label(probs, np.array([4]), 0.95)
