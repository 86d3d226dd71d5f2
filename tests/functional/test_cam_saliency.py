"""Hand-computed checks of the CAM-derived saliency ops (wsss.functional.cam_saliency)."""

from __future__ import annotations

import numpy as np
import pytest

from wsss.functional.cam_saliency import (
    boundary_background,
    cam_foreground,
    cam_saliency,
    combine_evidence,
    superpixel_mean,
    to_uint8,
)
from wsss.functional.crf import dense_crf


def test_cam_foreground_is_half_at_the_threshold_and_piecewise_linear() -> None:
    cams = np.array([[[0.0, 0.2, 0.6, 1.0]], [[0.4, 0.1, 0.0, 0.0]]], np.float32)  # (2, 1, 4)
    # max over classes: [0.4, 0.2, 0.6, 1.0]; t = 0.4: f / 0.8 below, 0.5 + (f - 0.4) / 1.2 above
    np.testing.assert_allclose(cam_foreground(cams, 0.4), [[0.5, 0.25, 0.5 + 0.2 / 1.2, 1.0]], atol=1e-6)
    np.testing.assert_allclose(cam_foreground(cams, 0.5), [[0.4, 0.2, 0.6, 1.0]], atol=1e-6)  # t = 0.5: identity
    assert cam_foreground(np.zeros((0, 2, 3), np.float32), 0.3).tolist() == [[0.0] * 3] * 2  # no class
    with pytest.raises(ValueError, match="threshold"):
        cam_foreground(cams, 1.0)
    with pytest.raises(ValueError, match="cams"):
        cam_foreground(cams[0], 0.4)


def test_superpixel_mean_paints_region_means() -> None:
    values = np.array([[1.0, 2.0, 0.0], [3.0, 6.0, 9.0]])
    segments = np.array([[0, 0, 2], [1, 1, 2]])
    np.testing.assert_allclose(superpixel_mean(values, segments), [[1.5, 1.5, 4.5], [4.5, 4.5, 4.5]])
    with pytest.raises(ValueError, match="same shape"):
        superpixel_mean(values, segments[:1])


def _two_tone() -> tuple[np.ndarray, np.ndarray]:
    """8x8 image: left half black, right half white; CAM 0.1 left, 0.9 right, one outlier each."""
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, 4:] = 255
    cam = np.full((8, 8), 0.1, np.float32)
    cam[:, 4:] = 0.9
    cam[2, 1], cam[5, 6] = 0.9, 0.1
    return image, cam[None]


def test_cam_saliency_averages_within_superpixels_that_follow_the_edge() -> None:
    image, cams = _two_tone()
    plain = cam_saliency(image, cams, 0.5, n_segments=None, crf=None)
    np.testing.assert_allclose(plain, cam_foreground(cams, 0.5))  # no refinement: the CAM foreground
    sal = cam_saliency(image, cams, 0.5, n_segments=4, compactness=10.0, crf=None)
    # SLIC's 4 regions split at the colour edge (columns 0-3 | 4-7) and between rows 4 and 5;
    # each outlier is averaged with its region (20 and 12 pixels)
    np.testing.assert_allclose(sal[:5, :4], (19 * 0.1 + 0.9) / 20, atol=1e-6)
    np.testing.assert_allclose(sal[5:, :4], 0.1, atol=1e-6)
    np.testing.assert_allclose(sal[:5, 4:], 0.9, atol=1e-6)
    np.testing.assert_allclose(sal[5:, 4:], (11 * 0.9 + 0.1) / 12, atol=1e-6)


def test_cam_saliency_crf_is_the_two_label_dense_crf_foreground() -> None:
    image, cams = _two_tone()
    crf = {"n_iter": 5, "sxy_bilateral": 4, "srgb_bilateral": 13, "compat_bilateral": 10}
    sal = cam_saliency(image, cams, 0.5, n_segments=None, crf=crf)
    p = cam_foreground(cams, 0.5)
    np.testing.assert_allclose(sal, dense_crf(image, np.stack([1 - p, p]), **crf)[1], atol=1e-6)
    assert sal[2, 1] < 0.5 < sal[5, 6]  # each outlier is pulled to its same-colour neighbours
    with pytest.raises(ValueError, match="matching cams"):
        cam_saliency(image[:4], cams, 0.5)


def test_to_uint8_rounds_and_clips() -> None:
    out = to_uint8(np.array([[0.0, 0.5, 1.0, 1.2, -1.0, 0.502]]))
    assert out.dtype == np.uint8 and out.tolist() == [[0, 128, 255, 255, 0, 128]]


def _blocks() -> tuple[np.ndarray, np.ndarray]:
    """9x9 image of 3x3 blocks (one superpixel each): grey border blocks, a red centre block."""
    image = np.full((9, 9, 3), 128, np.uint8)
    image[3:6, 3:6] = (220, 20, 20)
    segments = np.repeat(np.repeat(np.arange(9).reshape(3, 3), 3, axis=0), 3, axis=1)
    return image, segments


def test_boundary_background_of_a_centre_object() -> None:
    image, segments = _blocks()
    bg = boundary_background(image, segments, sigma=10.0)
    # grey blocks: the 8 grey blocks (all on the border) are at geodesic distance 0, the red centre
    # is ~80 Lab units away (similarity ~0): Len = 8, Area = 8, BndCon = sqrt(8), 1 - exp(-4)
    border = [0, 1, 2, 3, 5, 6, 7, 8]
    np.testing.assert_allclose(bg[border], 1 - np.exp(-4.0), atol=1e-6)
    assert bg[4] < 1e-6  # the centre reaches the border only through very different colours
    with pytest.raises(ValueError, match="segments"):
        boundary_background(image, segments[:3], sigma=10.0)


def test_combine_evidence_is_the_naive_bayes_product() -> None:
    out = combine_evidence(np.array([0.5, 0.8, 0.8, 0.0]), np.array([0.9, 0.5, 0.2, 0.7]))
    np.testing.assert_allclose(out[:3], [0.9, 0.8, 0.16 / (0.16 + 0.16)], atol=1e-9)
    assert 0 < out[3] < 1e-3  # a zero prior is clipped, not absorbing


def test_cam_saliency_with_the_boundary_prior_keeps_the_object_and_drops_the_border() -> None:
    image, _ = _blocks()
    cams = np.full((1, 9, 9), 0.6, np.float32)  # a flat CAM: at t = 0.5 every pixel is 0.6
    sal = cam_saliency(image, cams, 0.5, n_segments=9, compactness=10.0, boundary_sigma=10.0)
    prior = 1 - (1 - np.exp(-4.0))  # object probability of the grey border blocks
    expected_border = 0.6 * prior / (0.6 * prior + 0.4 * (1 - prior))
    assert sal[4, 4] == pytest.approx(0.6 * (1 - 1e-4) / (0.6 * (1 - 1e-4) + 0.4 * 1e-4), abs=1e-4)
    assert sal[0, 0] == pytest.approx(expected_border, abs=1e-5)
    with pytest.raises(ValueError, match="n_segments"):
        cam_saliency(image, cams, 0.5, n_segments=None, boundary_sigma=10.0)
