"""Checks of the pydensecrf wrappers in wsss.functional.crf."""

from __future__ import annotations

import numpy as np
import pytest

from wsss.functional.crf import dense_crf, dense_crf_labels, softmax_unary


def _two_region_image(height: int = 12, width: int = 16) -> np.ndarray:
    """Left half red, right half blue (non-square so a width/height swap would break)."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:, : width // 2] = (200, 20, 20)
    image[:, width // 2 :] = (20, 20, 200)
    return image


def test_dense_crf_shapes_dtype_and_normalisation() -> None:
    rng = np.random.default_rng(0)
    image = _two_region_image()
    probs = rng.random((3, 12, 16)).astype(np.float64)
    probs_before = probs.copy()
    out = dense_crf(image, probs)
    assert out.shape == (3, 12, 16) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)
    assert np.all(out >= 0)
    np.testing.assert_array_equal(probs, probs_before)  # argument untouched


def test_dense_crf_keeps_confident_unary() -> None:
    image = _two_region_image()
    probs = np.full((2, 12, 16), 0.01, dtype=np.float32)
    probs[0, :, :8] = 0.99
    probs[1, :, 8:] = 0.99
    out = dense_crf(image, probs)
    expected = np.zeros((12, 16), dtype=np.int64)
    expected[:, 8:] = 1
    np.testing.assert_array_equal(out.argmax(axis=0), expected)


def test_dense_crf_propagates_seeds_within_colour_regions() -> None:
    # Uniform unary everywhere except one confident seed column per colour region: the
    # bilateral kernel should spread each seed over its own region only.
    image = _two_region_image()
    probs = np.full((2, 12, 16), 0.5, dtype=np.float32)
    probs[:, :, 2] = np.array([0.95, 0.05])[:, None]
    probs[:, :, 13] = np.array([0.05, 0.95])[:, None]
    labels = dense_crf(image, probs).argmax(axis=0)
    assert np.all(labels[:, :8] == 0)
    assert np.all(labels[:, 8:] == 1)


def test_dense_crf_zero_iterations_is_the_normalised_unary() -> None:
    image = _two_region_image(4, 5)
    probs = np.zeros((2, 4, 5), dtype=np.float32)
    probs[0] = 0.6
    probs[1] = 0.2  # unnormalised: 0.6 / 0.8 = 0.75
    out = dense_crf(image, probs, n_iter=0)
    np.testing.assert_allclose(out[0], 0.75, rtol=1e-5)
    # An all-zero pixel becomes uniform rather than NaN.
    out = dense_crf(image, np.zeros((2, 4, 5)), n_iter=0)
    np.testing.assert_allclose(out, 0.5, rtol=1e-5)


def test_dense_crf_accepts_non_contiguous_inputs() -> None:
    image = np.ascontiguousarray(_two_region_image()[:, ::-1])[:, ::-1]  # negative strides
    probs = np.full((16, 12, 2), 0.5, dtype=np.float32).transpose(2, 1, 0)  # (2, 12, 16) view
    out = dense_crf(image, probs)
    assert out.shape == (2, 12, 16) and out.flags.c_contiguous


def test_dense_crf_validation() -> None:
    image = _two_region_image()
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(image.astype(np.float32), np.ones((2, 12, 16)))
    with pytest.raises(ValueError, match="RGB"):
        dense_crf(image[..., 0], np.ones((2, 12, 16)))
    with pytest.raises(ValueError, match="matching"):
        dense_crf(image, np.ones((2, 16, 12)))
    with pytest.raises(ValueError, match="floating"):
        dense_crf(image, np.ones((2, 12, 16), dtype=np.int64))
    with pytest.raises(ValueError, match="non-negative"):
        dense_crf(image, -np.ones((2, 12, 16)))


def test_dense_crf_labels_keeps_unanimous_labels_and_range() -> None:
    image = _two_region_image()
    labels = np.zeros((12, 16), dtype=np.uint8)
    labels[:, 8:] = 2
    out = dense_crf_labels(image, labels, n_labels=3)
    assert out.shape == (12, 16) and out.dtype == np.int64
    np.testing.assert_array_equal(out, labels)
    constant = dense_crf_labels(image, np.ones((12, 16), dtype=np.int32), n_labels=4)
    assert np.all(constant == 1)


def test_dense_crf_labels_cleans_noise_inside_a_region() -> None:
    image = _two_region_image()
    labels = np.zeros((12, 16), dtype=np.int64)
    labels[:, 8:] = 1
    labels[5, 3] = 1  # an isolated wrong pixel inside the red region
    out = dense_crf_labels(image, labels, n_labels=2)
    assert out.min() >= 0 and out.max() < 2
    assert out[5, 3] == 0
    assert np.all(out[:, 8:] == 1)


def test_dense_crf_labels_validation() -> None:
    image = _two_region_image()
    with pytest.raises(ValueError, match="lie in"):
        dense_crf_labels(image, np.full((12, 16), 3), n_labels=3)
    with pytest.raises(ValueError, match="integer"):
        dense_crf_labels(image, np.zeros((12, 16), dtype=np.float32), n_labels=3)
    with pytest.raises(ValueError, match="gt_prob"):
        dense_crf_labels(image, np.zeros((12, 16), dtype=np.int64), n_labels=3, gt_prob=1.0)
    with pytest.raises(ValueError, match="matching"):
        dense_crf_labels(image, np.zeros((16, 12), dtype=np.int64), n_labels=3)
    single = dense_crf_labels(image, np.zeros((12, 16), dtype=np.int64), n_labels=1)
    assert not single.any()


def test_dense_crf_matches_psa_raw_score_crf() -> None:
    # PSA feeds [bg_power; cams] unnormalised; renormalising shifts each pixel's unary by a
    # constant, so the marginals must agree with a direct pydensecrf call on the raw scores.
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    scores = rng.uniform(0.05, 1.0, (3, 9, 13)).astype(np.float32)
    crf = dcrf.DenseCRF2D(13, 9, 3)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(scores)))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.copy(image), compat=10)
    expected = np.array(crf.inference(10)).reshape(3, 9, 13)
    np.testing.assert_allclose(dense_crf(image, scores), expected, atol=1e-4)


def test_softmax_unary_on_cams_with_exact_zeros_matches_pydensecrf_clip() -> None:
    # Restricted CAMs are exactly 0 off-object; PSA/IRN's unary_from_softmax clips at 1e-5.
    from pydensecrf.utils import unary_from_softmax

    probs = np.zeros((3, 4, 5), dtype=np.float32)
    probs[0] = 0.3  # background score
    probs[1, :2] = 1.0 / (1.0 + 1e-5)  # a max-normalised CAM peak
    official = softmax_unary(probs)
    np.testing.assert_allclose(official, unary_from_softmax(probs), rtol=1e-6)
    assert official[2].max() == pytest.approx(-np.log(1e-5), rel=1e-5)  # 11.51
    legacy = softmax_unary(probs, clip=None)
    assert legacy[2].max() == pytest.approx(-np.log(1e-8), rel=1e-5)  # 18.42
    with pytest.raises(ValueError, match="clip"):
        softmax_unary(probs, clip=0.0)


def test_dense_crf_default_is_psa_crf_inference_on_exact_zeros() -> None:
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    scores = rng.uniform(0.0, 1.0, (3, 9, 13)).astype(np.float32)
    scores[0] *= 0.05  # weak background score, e.g. (1 - max cam)^alpha
    scores[1:, :, :4] = 0.0  # exact zeros, as off-object CAMs
    crf = dcrf.DenseCRF2D(13, 9, 3)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(scores)))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.copy(image), compat=10)
    expected = np.array(crf.inference(10)).reshape(3, 9, 13)
    np.testing.assert_allclose(dense_crf(image, scores), expected, atol=1e-5)


def test_dense_crf_clip_lets_context_overturn_a_zero_cam_hole() -> None:
    # A 4x4 hole of exact zeros inside a confident object on a flat image: with the official
    # clip (unary gap 11.5 - 3.9) the pairwise terms fill the hole, as PSA's CRF does; the old
    # 1e-8 floor (gap 18.4) keeps it background.
    image = np.full((12, 16, 3), 120, dtype=np.uint8)
    scores = np.zeros((2, 12, 16), np.float32)
    scores[0], scores[1] = 0.02, 1.0
    scores[1, 4:8, 6:10] = 0.0
    assert (dense_crf(image, scores).argmax(0)[4:8, 6:10] == 1).all()
    assert (dense_crf(image, scores, clip=None).argmax(0)[4:8, 6:10] == 0).all()
