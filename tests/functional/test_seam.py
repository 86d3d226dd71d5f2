"""Hand-computed checks of SEAM's PCM, ER/ECR losses and helpers (docs/methods.md, "SEAM")."""

from __future__ import annotations

import pytest
import torch

from wsss.functional.seam import (
    adaptive_min_pooling_loss,
    background_from_foreground,
    equivariant_cross_regularization,
    equivariant_regularization,
    max_norm,
    max_onehot,
    pcm,
    pcm_seed,
)

E = 1e-5


def _maps(*channels: list[float]) -> torch.Tensor:
    """(1, K, 1, W) from K rows of W values."""
    return torch.tensor([channels], dtype=torch.float32)[:, :, None, :]


def test_max_norm_min_max_per_channel() -> None:
    # ReLU([-1, 1, 3]) = [0, 1, 3]; min 0, max 3 -> ReLU(p - 0 - e) / (3 - 0 + e)
    out = max_norm(_maps([-1.0, 1.0, 3.0]))
    expected = _maps([0.0, (1 - E) / (3 + E), (3 - E) / (3 + E)])
    torch.testing.assert_close(out, expected)
    # min is subtracted: [2, 4] -> [0, (2 - e) / (2 + e)]
    torch.testing.assert_close(max_norm(_maps([2.0, 4.0])), _maps([0.0, (2 - E) / (2 + E)]))


def test_background_and_max_onehot_do_not_mutate() -> None:
    cam = _maps([9.0, 9.0], [0.2, 0.7], [0.5, 0.1])
    before = cam.clone()
    # bg = 1 - max(fg) = [1 - 0.5, 1 - 0.7]
    expected_bg = _maps([0.5, 0.3], [0.2, 0.7], [0.5, 0.1])
    torch.testing.assert_close(background_from_foreground(cam), expected_bg)
    # only the per-pixel foreground max survives; channel 0 passes through
    torch.testing.assert_close(max_onehot(cam), _maps([9.0, 9.0], [0.0, 0.7], [0.5, 0.0]))
    # ties at the maximum are all kept (SEAM zeroes values != max)
    torch.testing.assert_close(max_onehot(_maps([0.0], [0.4], [0.4])), _maps([0.0], [0.4], [0.4]))
    assert torch.equal(cam, before)


def test_pcm_seed_matches_seam_preprocessing() -> None:
    # relu: ch0 [5, 0], ch1 [2, 4], ch2 [0, 1]; per-channel max 5, 4, 1
    cam = _maps([5.0, -1.0], [2.0, 4.0], [-3.0, 1.0]).requires_grad_()
    a, b = (2 - E) / (4 + E), (4 - E) / (4 + E)  # ch1 normalised; ch2 -> [0, (1-e)/(1+e)] < b
    out = pcm_seed(cam)
    torch.testing.assert_close(out, _maps([1 - a, 1 - b], [a, b], [0.0, 0.0]))
    assert not out.requires_grad


def test_pcm_hand_computed_affinity() -> None:
    # pixel features (1,0), (0,2), (3,4) -> unit vectors; cosine matrix
    # S = [[1, 0, .6], [0, 1, .8], [.6, .8, 1]], column sums 1.6, 1.8, 2.4
    feats = torch.tensor([[1.0, 0.0, 3.0], [0.0, 2.0, 4.0]])[None, :, None, :]
    cam = _maps([1.0, 0.0, 2.0])
    # y_hat_j = sum_i y_i S_ij / colsum_j: [(1 + 1.2)/1.6, 1.6/1.8, (.6 + 2)/2.4]
    out = pcm(cam, feats, preprocess=False)
    torch.testing.assert_close(out, _maps([2.2 / 1.6, 1.6 / 1.8, 2.6 / 2.4]), atol=1e-4, rtol=0)


def test_pcm_relu_on_negative_similarity() -> None:
    # anti-parallel features: S = [[1, -1], [-1, 1]] -> ReLU -> identity -> output = input
    feats = torch.tensor([[1.0, -1.0]])[None, :, None, :]
    cam = _maps([0.3, 0.8], [0.1, 0.0])
    torch.testing.assert_close(pcm(cam, feats, preprocess=False), cam, atol=1e-4, rtol=0)


def test_pcm_resizes_cam_align_corners_and_grads_only_through_features() -> None:
    # one-hot features per pixel -> identity affinity, so the output is the resized seed
    feats = torch.eye(9).view(1, 9, 3, 3).requires_grad_()
    cam = torch.tensor([[[[0.0, 2.0], [4.0, 6.0]]]])
    out = pcm(cam, feats, preprocess=False)
    expected = torch.tensor([[[[0.0, 1.0, 2.0], [2.0, 3.0, 4.0], [4.0, 5.0, 6.0]]]])
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)

    raw = torch.randn(1, 3, 3, 3, requires_grad=True)
    pcm(raw, feats).sum().backward()
    assert raw.grad is None and feats.grad is not None


def test_equivariant_regularization_foreground_only() -> None:
    a = _maps([100.0, -5.0], [0.2, 0.4], [1.0, 0.0])
    b = _maps([0.0, 0.0], [0.5, 0.4], [0.0, 0.1])
    # |diffs| over channels 1..2: 0.3, 0, 1, 0.1 -> mean 0.35 (channel 0 ignored)
    torch.testing.assert_close(equivariant_regularization(a, b), torch.tensor(0.35))


def test_equivariant_cross_regularization_topk() -> None:
    cam = _maps([7.0, 7.0], [0.8, 0.1], [0.3, 0.6])
    # target: bg = [0.2, 0.4]; one-hot fg: ch1 [0.8, 0], ch2 [0, 0.6]
    target = _maps([0.2, 0.4], [0.8, 0.0], [0.0, 0.6])
    pcm_cam = _maps([0.2, 0.0], [0.5, 0.1], [0.0, 0.0]).requires_grad_()
    # errors [0, .4, .3, .1, 0, .6]; k = int(3*1*2*0.2) = 1 -> 0.6
    torch.testing.assert_close(equivariant_cross_regularization(cam, pcm_cam), torch.tensor(0.6))
    # k = 3 -> (0.6 + 0.4 + 0.3) / 3
    torch.testing.assert_close(
        equivariant_cross_regularization(cam, pcm_cam, topk_ratio=0.5), torch.tensor(1.3 / 3)
    )
    # batch mean: a second sample whose PCM equals its target adds 0 -> 0.6 / 2
    batch = equivariant_cross_regularization(torch.cat([cam, cam]), torch.cat([pcm_cam, target]))
    torch.testing.assert_close(batch, torch.tensor(0.3))
    cam.requires_grad_()
    equivariant_cross_regularization(cam, pcm_cam).backward()
    assert cam.grad is None and pcm_cam.grad is not None  # the target is detached


def test_adaptive_min_pooling_loss() -> None:
    pcm_cam = torch.tensor([[
        [[9.0, 9.0], [9.0, 9.0]],  # background slot, ignored
        [[1.0, -2.0], [3.0, 0.5]],
        [[2.0, -1.0], [-1.0, 4.0]],
    ]])
    both = torch.tensor([[1.0, 1.0]])
    # per-pixel max [[2, -1], [3, 4]]; default k = 4 // 4 = 1: smallest -1 -> ReLU -> 0
    assert adaptive_min_pooling_loss(pcm_cam, both).item() == 0.0
    # k = 2: smallest [-1, 2] -> ReLU sum 2 -> / (2 * 1)
    torch.testing.assert_close(
        adaptive_min_pooling_loss(pcm_cam, both, ratio=0.5), torch.tensor(1.0)
    )
    # class 2 masked out: max [[1, 0], [3, 0.5]] -> smallest two [0, 0.5] -> 0.5 / 2
    first = torch.tensor([[1.0, 0.0]])
    torch.testing.assert_close(
        adaptive_min_pooling_loss(pcm_cam, first, ratio=0.5), torch.tensor(0.25)
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_losses_run_in_float32(dtype: torch.dtype) -> None:
    cam = torch.rand(2, 4, 3, 3).to(dtype)
    assert equivariant_regularization(cam, cam).dtype == torch.float32
    assert equivariant_cross_regularization(cam, cam).dtype == torch.float32
    assert adaptive_min_pooling_loss(cam, torch.ones(2, 3)).dtype == torch.float32
    assert pcm(cam, torch.rand(2, 5, 3, 3).to(dtype)).dtype == torch.float32
