import math

import pytest
import torch

from wsss.functional.affinity import (
    affinity_labels,
    affinity_loss,
    irn_label_from_cams,
    neighbour_offsets,
    pair_valid_mask,
    pairwise_affinity,
    psa_affinity_label,
)


def test_neighbour_offsets() -> None:
    assert neighbour_offsets(2) == [(0, 1), (1, -1), (1, 0), (1, 1)]
    assert len(neighbour_offsets(5)) == 34  # 4 + 9 + 9 + 7 + 5
    assert len(neighbour_offsets(10)) == 152
    # Half neighbourhood: no offset appears together with its negation.
    offsets = set(neighbour_offsets(5))
    assert not any((-dy, -dx) in offsets for dy, dx in offsets)


def test_pair_counts_3x3_radius_2() -> None:
    # Label map (255 = ignore):      Offsets (0,1) (1,-1) (1,0) (1,1), 20 in-map pairs in total.
    #   0   0   1                    (0,1):  00 bg+, 01 neg | 0-255, 255-1 none | 22 fg+, 21 neg
    #   0  255  1                    (1,0):  00 bg+, 02 neg | 0-255, 255-2 none | 11 fg+, 11 fg+
    #   2   2   1                    (1,1):  0-255 none, 01 neg, 02 neg, 255-1 none
    #                                (1,-1): 00 bg+, 1-255 none, 255-2 none, 12 neg
    # -> bg+ 3, fg+ 3, neg 6.
    label = torch.tensor([[0, 0, 1], [0, 255, 1], [2, 2, 1]])
    bg_pos, fg_pos, neg = affinity_labels(label, radius=2)
    assert bg_pos.shape == (4, 3, 3)
    assert (int(bg_pos.sum()), int(fg_pos.sum()), int(neg.sum())) == (3, 3, 6)
    assert pair_valid_mask(2, 3, 3).sum() == 20
    # (0,1) at source (0,0) is bg+, at (2,0) fg+; (1,-1) at source (1,2) is negative.
    assert bg_pos[0, 0, 0] and fg_pos[0, 2, 0] and neg[1, 1, 2]
    # Out-of-map targets are never pairs.
    assert not (bg_pos | fg_pos | neg)[~pair_valid_mask(2, 3, 3)].any()
    # Batched input gives the same masks per element.
    batched = affinity_labels(torch.stack([label, label]), radius=2)[2]
    assert torch.equal(batched[1], neg)


def test_pairwise_affinity_and_loss_hand_computed() -> None:
    # 1x3 map, D = 2; only offset (0,1) stays inside. mean|f0 - f1| = 1, mean|f1 - f2| = ln 2.
    ln2 = math.log(2.0)
    features = torch.tensor([[0.0, 0.0, 2 * ln2], [0.0, 2.0, 2.0]]).view(1, 2, 1, 3)
    aff = pairwise_affinity(features, radius=2)
    assert aff.shape == (1, 4, 1, 3)
    assert torch.allclose(aff[0, 0, 0], torch.tensor([math.exp(-1), 0.5, 0.0]), atol=1e-6)
    assert torch.all(aff[0, 1:] == 0)
    # Labels 0 0 1: pair (0,1) is bg+ with a = e^-1, pair (1,2) is negative with a = 0.5.
    label = torch.tensor([[[0, 0, 1]]])
    loss = affinity_loss(features, label, radius=2)
    expected = (-math.log(math.exp(-1) + 1e-5) / (1 + 1e-5)) / 4 + (
        -math.log(1 + 1e-5 - 0.5) / (1 + 1e-5)
    ) / 2
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
    assert math.isclose(expected, 0.25 + ln2 / 2, rel_tol=1e-3)


@pytest.mark.parametrize("chunk_bytes", [1, 4 * 2 * 5 * 6 * 3, 2**20])  # 1 channel, 3, all
def test_pairwise_affinity_lean_path_matches_autograd_path(chunk_bytes: int) -> None:
    # The no-grad path (channel chunks, one reused buffer) gives the autograd path's values.
    torch.manual_seed(0)
    features = torch.rand(2, 7, 5, 6)
    with_grad = pairwise_affinity(features.clone().requires_grad_(), radius=3).detach()
    with torch.no_grad():
        lean = pairwise_affinity(features, radius=3, chunk_bytes=chunk_bytes)
    assert torch.allclose(lean, with_grad, rtol=1e-6, atol=1e-7)
    assert torch.equal(lean == 0, ~pair_valid_mask(3, 5, 6).expand_as(lean))
    # Autograd-free call without no_grad (plain tensors) takes the lean path too.
    assert torch.allclose(pairwise_affinity(features, radius=3), with_grad, rtol=1e-6, atol=1e-7)


def test_affinity_loss_gradient() -> None:
    features = torch.randn(2, 4, 6, 7, requires_grad=True)
    label = torch.randint(0, 3, (2, 6, 7))
    label[0, 0, :] = 255
    loss = affinity_loss(features, label, radius=3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(features.grad).all()


def test_psa_affinity_label() -> None:
    # Pixels: bg/bg -> 0, c1/c1 -> 1, bg/c2 -> 255 (unsure), no score -> 255, c2/bg -> 0 (ha wins).
    la = torch.tensor(
        [[0.9, 0.1, 0.9, 0.0, 0.1], [0.1, 0.8, 0.0, 0.0, 0.2], [0.0, 0.1, 0.1, 0.0, 0.7]]
    )
    ha = torch.tensor(
        [[0.6, 0.1, 0.1, 0.0, 0.5], [0.3, 0.8, 0.2, 0.0, 0.2], [0.1, 0.1, 0.7, 0.0, 0.3]]
    )
    label = psa_affinity_label(la.view(3, 1, 5), ha.view(3, 1, 5))
    assert label.tolist() == [[0, 1, 255, 255, 0]]


def test_irn_label_from_cams() -> None:
    fg = torch.tensor([[0, 0, 3, 3]], dtype=torch.uint8)
    bg = torch.tensor([[0, 2, 3, 0]], dtype=torch.uint8)
    assert irn_label_from_cams(fg, bg).tolist() == [[0, 255, 3, 3]]
