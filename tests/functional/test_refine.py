"""Superpixel majority vote and confidence thresholding for self-training rounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss.functional.refine import confident_label, superpixel_refine


def _two_halves() -> tuple[np.ndarray, np.ndarray]:
    image = np.full((40, 40, 3), 50, dtype=np.uint8)
    image[:, 20:] = 200
    label = np.zeros((40, 40), dtype=np.uint8)
    label[:, 20:] = 7
    return image, label


def test_superpixel_refine_fixes_single_wrong_pixel() -> None:
    image, label = _two_halves()
    noisy = label.copy()
    noisy[10, 5] = 7
    noisy[30, 33] = 0
    refined = superpixel_refine(image, noisy, n_segments=16)
    assert refined.dtype == np.uint8 and refined.shape == (40, 40)
    assert np.array_equal(refined, label)


def test_superpixel_refine_ignore_handling() -> None:
    image, label = _two_halves()
    assert (superpixel_refine(image, np.full_like(label, 255), n_segments=16) == 255).all()
    partly = label.copy()
    partly[5:15, 2:8] = 255  # ignored pixels do not vote and get the majority label
    assert np.array_equal(superpixel_refine(image, partly, n_segments=16), label)


def test_superpixel_refine_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    label = rng.integers(0, 3, (30, 30)).astype(np.uint8)
    assert np.array_equal(superpixel_refine(image, label), superpixel_refine(image, label))


def test_confident_label() -> None:
    probs = torch.tensor([[0.9, 0.4, 0.3], [0.1, 0.6, 0.7]]).view(2, 1, 3)
    out = confident_label(probs, threshold=0.65)
    assert out.dtype == torch.int64
    assert out.tolist() == [[0, 255, 1]]


def test_background_scale_matches_the_target_foreground_fraction() -> None:
    from wsss.functional.refine import background_scale_for_fraction, foreground_log_ratio

    # background-heavy predictions: 10 pixels, foreground probability 0.05, 0.10, ..., 0.50
    fg = torch.arange(1, 11, dtype=torch.float32) * 0.05
    probs = torch.stack([1 - fg, fg]).reshape(2, 2, 5)
    ratios = [foreground_log_ratio(probs)]
    assert int((ratios[0] > 0).sum()) == 0  # argmax: all background
    for target in (0.0, 0.3, 0.5, 1.0):
        s = background_scale_for_fraction(ratios, target)
        scaled = probs.clone()
        scaled[0] *= s
        assert (scaled.argmax(0) > 0).float().mean().item() == pytest.approx(target), target
    # the 30 % most foreground-like pixels win: fg probabilities 0.40, 0.45, 0.50
    s = background_scale_for_fraction(ratios, 0.3)
    assert sorted(fg[(fg / ((1 - fg) * s)) > 1].tolist()) == pytest.approx([0.40, 0.45, 0.50])
    # an image without foreground classes stays background whatever the target
    only_bg = torch.ones(1, 2, 2)
    assert torch.isneginf(foreground_log_ratio(only_bg)).all()
    s = background_scale_for_fraction([foreground_log_ratio(only_bg), *ratios], 0.5)
    assert 0 < s < float("inf")
    with pytest.raises(ValueError, match="target"):
        background_scale_for_fraction(ratios, 1.5)
