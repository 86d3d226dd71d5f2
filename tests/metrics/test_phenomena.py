"""Phenomena measures on hand-built label maps: exact counts and ratios."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss.metrics.phenomena import (
    PhenomenaMeter,
    activation_counts,
    boundary_counts,
    boundary_map,
    boundary_tolerance,
    context_counts,
    fill_ignored,
    resize_nearest,
)

GT = np.array([[0, 0, 1, 1],
               [0, 0, 1, 1],
               [255, 0, 2, 2],
               [0, 0, 2, 2]], dtype=np.uint8)  # fmt: skip
LABEL = np.array([[0, 1, 1, 0],
                  [0, 0, 1, 255],
                  [1, 0, 2, 2],
                  [0, 0, 0, 2]], dtype=np.uint8)  # fmt: skip
PARTS = np.array([[0, 0, 2, 1],
                  [0, 0, 2, 1],
                  [0, 0, 1, 1],
                  [0, 0, 3, 2]], dtype=np.uint8)  # fmt: skip
KINDS = np.array([[0, 0, 0, 0],
                  [2, 2, 2, 2],
                  [2, 2, 2, 2],
                  [2, 2, 2, 2]], dtype=np.uint8)  # fmt: skip


def test_activation_counts_recall_precision_and_parts() -> None:
    c = activation_counts(LABEL, GT, PARTS)
    # 15 valid px; 8 object px of which 5 correct; 6 valid px labelled fg, 5 of them correct;
    # key part (2) holds 3 object px, all correct; the other 5 object px hold 2 correct.
    assert c == {"valid": 15, "labelled": 14, "object": 8, "object_correct": 5, "pred_fg": 6,
                 "pred_fg_correct": 5, "body": 5, "body_correct": 2, "key": 3, "key_correct": 3}
    assert "body" not in activation_counts(LABEL, GT)


def test_context_counts_all_and_typical_background() -> None:
    # 7 GT background px; one of them (0, 1) labelled 1, a class present in the image.
    assert context_counts(LABEL, GT) == {"background": 7, "background_fp": 1}
    c = context_counts(LABEL, GT, KINDS, typical={1: 0, 2: 2})
    # class 1 (typical kind 0): 2 bg px of kind 0, one labelled 1; 5 of other kinds, none.
    # class 2 (typical kind 2): 5 bg px of kind 2, none labelled 2; 2 other, none.
    assert c == {"background": 7, "background_fp": 1, "typical": 7, "typical_fp": 1, "other": 7, "other_fp": 0}
    # a class with no typical kind is left out of the restricted counts
    assert context_counts(LABEL, GT, KINDS, typical={2: 2})["typical_fp"] == 0
    # an absent class in the label is no context false positive
    assert context_counts(np.full_like(GT, 5), GT)["background_fp"] == 0


def test_boundary_counts_partly_shifted_edge() -> None:
    gt = np.tile(np.array([0, 0, 1, 1, 1, 1], np.uint8), (6, 1))
    label = gt.copy()
    label[:3] = [0, 0, 0, 0, 1, 1]
    # GT edge: column 1 (6 px). Label edge: column 3 in rows 0-2, (2, 2), column 1 in rows 3-5.
    assert boundary_map(gt).sum() == 6 and boundary_map(label).sum() == 7
    assert boundary_counts(label, gt, tolerance=1).tolist() == [4, 7, 4, 6]
    assert boundary_counts(label, gt, tolerance=2).tolist() == [7, 7, 6, 6]
    assert boundary_counts(gt, gt, tolerance=0).tolist() == [6, 6, 6, 6]


def test_void_band_is_filled_from_the_nearest_side() -> None:
    gt = np.tile(np.array([0, 0, 255, 255, 1, 1], np.uint8), (4, 1))
    assert fill_ignored(gt)[0].tolist() == [0, 0, 0, 1, 1, 1]
    label = np.tile(np.array([0, 0, 0, 1, 1, 1], np.uint8), (4, 1))
    assert boundary_counts(label, gt, tolerance=0).tolist() == [4, 4, 4, 4]
    # unsure label pixels add no boundary of their own
    unsure = label.copy()
    unsure[1:3, 4] = 255
    assert boundary_counts(unsure, gt, tolerance=0).tolist() == [4, 4, 4, 4]
    assert fill_ignored(np.full((2, 2), 255, np.uint8)) is None
    assert boundary_counts(np.full_like(gt, 255), gt, tolerance=1).tolist() == [0, 0, 0, 4]


def test_tolerance_scales_with_the_diagonal() -> None:
    assert boundary_tolerance((120, 160)) == 2  # 0.008 * 200 = 1.6 -> 2
    assert boundary_tolerance((375, 500)) == 5
    assert boundary_tolerance((48, 64)) == 1
    assert boundary_tolerance((10, 10)) == 1


def test_meter_sums_counts_over_images() -> None:
    meter = PhenomenaMeter(typical={1: 0, 2: 2})
    meter.update(LABEL, GT, PARTS, KINDS)
    gt2 = np.zeros((4, 4), np.uint8)
    gt2[:, 2:] = 1  # 8 object px, 4 found (column 3); 8 bg px, 4 labelled 1 (column 0)
    label2 = np.zeros((4, 4), np.uint8)
    label2[:, :1] = 1
    label2[:, 3] = 1
    meter.update(label2, gt2, np.ones_like(gt2), np.zeros_like(gt2))
    r = meter.result()
    assert r["num_images"] == 2
    assert r["recall"] == pytest.approx((5 + 4) / (8 + 8))  # pooled, not the mean of 5/8 and 4/8
    assert r["precision"] == pytest.approx((5 + 4) / (6 + 8))
    assert r["body_recall"] == pytest.approx((2 + 4) / (5 + 8))
    assert r["key_recall"] == pytest.approx(3 / 3)
    assert r["context_fp"] == pytest.approx((1 + 4) / (7 + 8))
    assert r["context_fp_typical"] == pytest.approx((1 + 4) / (7 + 8))  # image 2: kind 0 is class 1's
    assert r["context_fp_other"] == pytest.approx(0 / (7 + 0))
    assert r["labelled_fraction"] == pytest.approx((14 + 16) / (15 + 16))
    bp, br = r["boundary_precision"], r["boundary_recall"]
    assert r["boundary_f"] == pytest.approx(2 * bp * br / (bp + br))


def test_meter_without_metadata_or_boundaries() -> None:
    meter = PhenomenaMeter()
    gt = np.zeros((4, 4), np.uint8)
    gt[1:3, 1:3] = 3
    meter.update(np.zeros_like(gt), gt)  # all background: no label boundary at all
    r = meter.result()
    assert r["recall"] == 0.0 and r["precision"] is None and r["context_fp"] == 0.0
    assert r["body_recall"] is None and r["context_fp_typical"] is None
    assert r["boundary_precision"] is None and r["boundary_recall"] == 0.0 and r["boundary_f"] == 0.0
    assert PhenomenaMeter().result()["boundary_f"] is None


def test_resize_nearest_matches_torch_nearest() -> None:
    x = np.random.default_rng(0).integers(0, 5, (37, 53)).astype(np.uint8)
    for shape in ((41, 41), (10, 7), (37, 53), (80, 100)):
        ref = F.interpolate(torch.from_numpy(x)[None, None].float(), size=shape, mode="nearest")[0, 0]
        assert np.array_equal(resize_nearest(x, shape), ref.numpy().astype(np.uint8))


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="same shape"):
        activation_counts(LABEL, GT[:3])
    with pytest.raises(ValueError, match="same shape"):
        boundary_counts(LABEL, GT[:3])
