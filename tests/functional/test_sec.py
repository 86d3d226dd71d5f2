"""Hand-computed checks of the SEC losses, cues, saliency and training CRF."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn

from wsss.functional.sec import (
    crf_batch,
    crf_downscaled,
    cue_statistics,
    cues_to_label_map,
    gradient_saliency,
    gwrp,
    label_map_to_cues,
    localization_cues,
    probability_floor,
    sec_constrain_loss,
    sec_expand_loss,
    sec_seed_loss,
)

N = 255  # no cue


def test_probability_floor_two_classes() -> None:
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
    probs = probability_floor(logits).flatten()
    # softmax = (0.25, 0.75); + 1e-4 each; divided by 1.0002
    expected = torch.tensor([0.2501 / 1.0002, 0.7501 / 1.0002])
    torch.testing.assert_close(probs, expected)
    assert probs.dtype == torch.float32


def test_gwrp_limits_and_hand_value() -> None:
    scores = torch.tensor([1.0, 4.0, 2.0, 3.0]).view(1, 1, 2, 2)
    assert gwrp(scores, 0.0).item() == pytest.approx(4.0)  # max pooling
    assert gwrp(scores, 1.0).item() == pytest.approx(2.5)  # average pooling
    # sorted 4,3,2,1 with weights 1, 1/2, 1/4, 1/8: 6.125 / 1.875
    assert gwrp(scores, 0.5).item() == pytest.approx(49.0 / 15.0)


def test_gwrp_per_class_decay() -> None:
    scores = torch.tensor([[1.0, 4.0, 2.0, 3.0], [1.0, 4.0, 2.0, 3.0]]).view(1, 2, 2, 2)
    out = gwrp(scores, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(out, torch.tensor([[4.0, 2.5]]))


def test_seed_loss_by_hand() -> None:
    # one image, 2 channels (bg, fg), 1x2 grid; pixel 0 is a bg cue, pixel 1 a fg cue
    probs = torch.tensor([[0.8, 0.4], [0.2, 0.6]]).view(1, 2, 1, 2)
    cues = torch.tensor([[1, 0], [0, 1]]).view(1, 2, 1, 2)
    expected = -(math.log(0.8) + math.log(0.6)) / 2
    assert sec_seed_loss(probs, cues).item() == pytest.approx(expected, rel=1e-6)
    # an image without cues contributes 0 but still counts in the batch mean
    both = sec_seed_loss(torch.cat([probs, probs]), torch.cat([cues, torch.zeros_like(cues)]))
    assert both.item() == pytest.approx(expected / 2, rel=1e-6)


def _expand_probs() -> torch.Tensor:
    # channels: bg, class 0, class 1 on a 1x2 grid; every pixel sums to 1
    return torch.tensor([[0.5, 0.2], [0.3, 0.6], [0.2, 0.2]]).view(1, 3, 1, 2)


def test_expand_loss_by_hand() -> None:
    probs = _expand_probs()
    loss = sec_expand_loss(probs, torch.tensor([[1.0, 0.0]]), d_fg=0.5, d_bg=0.5)
    g_present = (0.6 + 0.5 * 0.3) / 1.5  # GWRP of class 0 = 0.5
    g_bg = (0.5 + 0.5 * 0.2) / 1.5  # GWRP of background = 0.4
    expected = -math.log(g_present) - math.log(1 - 0.2) - math.log(g_bg)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_expand_loss_without_present_or_absent_classes() -> None:
    probs = _expand_probs()
    g_bg = 0.4
    none_present = sec_expand_loss(probs, torch.tensor([[0.0, 0.0]]), d_fg=0.5, d_bg=0.5)
    expected = -(math.log(1 - 0.6) + math.log(1 - 0.2)) / 2 - math.log(g_bg)
    assert none_present.item() == pytest.approx(expected, rel=1e-6)
    all_present = sec_expand_loss(probs, torch.tensor([[1.0, 1.0]]), d_fg=0.5, d_bg=0.5)
    expected = -(math.log(0.5) + math.log((0.2 + 0.1) / 1.5)) / 2 - math.log(g_bg)
    assert all_present.item() == pytest.approx(expected, rel=1e-6)


def test_sec_losses_backward_finite() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 5, requires_grad=True)
    probs = probability_floor(logits)
    labels = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    cues = label_map_to_cues(torch.randint(0, 4, (2, 5, 5)), num_classes=3)
    loss = (
        sec_seed_loss(probs, cues)
        + sec_expand_loss(probs, labels)
        + sec_constrain_loss(probs, probs.roll(1, dims=1))
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_constrain_loss_by_hand() -> None:
    probs = torch.tensor([[0.5, 0.3], [0.5, 0.7]]).view(1, 2, 1, 2)
    assert sec_constrain_loss(probs, probs).item() == pytest.approx(0.0, abs=1e-7)
    q = torch.tensor([[0.8, 0.3], [0.2, 0.7]]).view(1, 2, 1, 2).requires_grad_(True)
    f = probs.clone().requires_grad_(True)
    loss = sec_constrain_loss(f, q)
    kl = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)  # second pixel: Q == f
    assert loss.item() == pytest.approx(kl / 2, rel=1e-6)
    loss.backward()
    assert q.grad is None and f.grad is not None  # Q is a fixed target


def test_constrain_loss_clips_target() -> None:
    probs = torch.tensor([0.5, 0.5]).view(1, 2, 1, 1)
    q = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    q1, q2 = 1.0 / 1.0001, 1e-4 / 1.0001
    expected = q1 * math.log(q1 / 0.5) + q2 * math.log(q2 / 0.5)
    assert sec_constrain_loss(probs, q).item() == pytest.approx(expected, rel=1e-6)


def _cue_example() -> torch.Tensor:
    cams = torch.zeros(2, 4, 4)
    cams[0, 0, 0], cams[0, 1, 0], cams[0, 1, 1] = 3.0, 10.0, 5.0  # key 0, threshold 2
    cams[1, 1, 1], cams[1, 1, 2] = 3.0, 4.0  # key 2, threshold 0.8
    cams[1, 2, 2], cams[1, 2, 3] = 1.0, 0.5
    saliency = torch.arange(16.0).view(4, 4)  # lowest 25 % = first row
    return localization_cues(cams, torch.tensor([0, 2]), saliency, bg_fraction=0.25, num_classes=3)


def test_localization_cues_with_conflicts() -> None:
    cues = _cue_example()
    assert cues.shape == (4, 4, 4) and cues.dtype == torch.uint8
    assert int(cues.sum(dim=0).max()) == 1  # cues never overlap
    expected = torch.tensor(
        [
            [N, 0, 0, 0],  # (0,0): background and class 0 both claim it -> dropped
            [1, 3, 3, N],  # (1,1): normalised CAMs 0.5 (key 0) < 0.75 (key 2) -> class 2
            [N, N, 3, N],  # (2,3): 0.5 is below 0.2 * 4 -> no cue
            [N, N, N, N],
        ],
        dtype=torch.uint8,
    )
    assert torch.equal(cues_to_label_map(cues), expected)
    assert torch.equal(label_map_to_cues(expected, num_classes=3), cues)


def test_localization_cues_background_only() -> None:
    cues = localization_cues(torch.zeros(0, 2, 5), torch.zeros(0), torch.arange(10.0).view(2, 5))
    assert cues.shape == (21, 2, 5)
    assert cues[0].flatten().tolist() == [1] + [0] * 9  # int(0.1 * 10) = 1 pixel


def test_cue_statistics_by_hand() -> None:
    gt = torch.tensor([[0, 0, 0, 255], [1, 1, 3, 0], [0, 0, 3, 0], [0, 0, 0, 0]])
    stats = cue_statistics(_cue_example(), gt)
    assert stats["coverage"] == pytest.approx(7 / 16)
    # 7 cue pixels, (0,3) has GT 255; of the other 6, only (1,1) is wrong (3 vs GT 1)
    assert stats["precision"] == pytest.approx(5 / 6)
    assert (stats["cue_pixels"], stats["valid_cue_pixels"], stats["correct_cue_pixels"]) == (
        7,
        6,
        5,
    )


def test_gradient_saliency_of_linear_model() -> None:
    conv = nn.Conv2d(3, 2, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.5, 1.0, -3.0]]).view(2, 3, 1, 1))
    model = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    sal = gradient_saliency(model, torch.randn(1, 3, 5, 5))
    # d(sum logits)/dx_k = (sum_c W_ck) / 25 = (1.5, -1, -2.5) / 25 -> max |.| = 0.1
    torch.testing.assert_close(sal, torch.full((5, 5), 0.1))
    assert conv.weight.grad is None


def test_gradient_saliency_median_removes_single_peak() -> None:
    mask = torch.zeros(1, 1, 5, 5)
    mask[..., 2, 2] = 1.0
    model = nn.Sequential(nn.Flatten(), nn.Linear(75, 1))
    with torch.no_grad():
        model[1].weight.copy_((mask.expand(1, 3, 5, 5) * 7.0).reshape(1, 75))
    assert gradient_saliency(model, torch.zeros(1, 3, 5, 5)).abs().max() == 0


def _two_region_problem() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.zeros((24, 32, 3), dtype=np.uint8)
    image[:, 16:] = (200, 180, 40)
    label = np.zeros((6, 8), dtype=np.int64)
    label[:, 4:] = 2
    probs = np.full((3, 6, 8), 0.02, dtype=np.float32)
    np.put_along_axis(probs, label[None], 0.96, axis=0)
    return image, probs, label


def test_crf_downscaled_shape_and_confident_unary() -> None:
    image, probs, label = _two_region_problem()
    q = crf_downscaled(image, probs)
    assert q.shape == (3, 6, 8) and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(axis=0), 1.0, atol=1e-4)
    assert np.array_equal(q.argmax(axis=0), label)


def test_crf_batch_matches_serial_and_pool() -> None:
    image, probs, _ = _two_region_problem()
    rng = np.random.default_rng(0)
    noisy = rng.dirichlet(np.ones(3), size=(6, 8)).transpose(2, 0, 1).astype(np.float32)
    images, batch = np.stack([image, image]), np.stack([probs, noisy])
    serial = crf_batch(images, batch)
    assert isinstance(serial, np.ndarray) and serial.shape == (2, 3, 6, 8)
    np.testing.assert_allclose(serial.sum(axis=1), 1.0, atol=1e-4)
    with ThreadPoolExecutor(max_workers=2) as pool:
        pooled = crf_batch(torch.from_numpy(images), torch.from_numpy(batch), pool=pool)
    assert isinstance(pooled, torch.Tensor) and pooled.dtype == torch.float32
    np.testing.assert_allclose(pooled.numpy(), serial, atol=1e-6)
