"""Hand-computed checks of wsss.metrics.segmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsss.metrics.segmentation import SegmentationMetric, class_names_iou, scores_from_confusion


def test_segmentation_metric_hand_computed_with_ignore_and_absent_class() -> None:
    # 4 classes; class 3 appears in neither GT nor prediction -> NaN, excluded from the mean.
    gt = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 3]])  # the two 255-GT pixels are not counted
    metric = SegmentationMetric(num_classes=4)
    metric.update(pred, gt)
    out = metric.compute()
    # Counted pixels: (0,0)->0, (0,1)->1, (1,1)->1, (1,1)->1, (2,2)->2, (2,0)->0
    expected_confusion = np.array(
        [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], dtype=np.int64
    )
    np.testing.assert_array_equal(out["confusion"], expected_confusion)
    assert out["confusion"].dtype == np.int64
    # IoU_0 = 1 / (2 + 2 - 1) = 1/3; IoU_1 = 2 / (2 + 3 - 2) = 2/3; IoU_2 = 1 / (2 + 1 - 1) = 1/2
    assert out["iou"][:3] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert math.isnan(out["iou"][3])
    assert out["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert out["pixel_acc"] == pytest.approx(4 / 6)


def test_prediction_255_counts_as_background_and_accumulates_over_updates() -> None:
    metric = SegmentationMetric(num_classes=3)
    metric.update(np.array([[255, 1]]), np.array([[0, 1]]))
    metric.update(torch.tensor([[255, 2]]), torch.tensor([[2, 2]]))
    # pixels: (0 -> 0), (1 -> 1), (2 -> 0), (2 -> 2)
    np.testing.assert_array_equal(metric.confusion, [[1, 0, 0], [0, 1, 0], [1, 0, 1]])
    out = metric.compute()
    assert out["iou"] == pytest.approx([1 / 2, 1.0, 1 / 2])
    metric.reset()
    assert metric.confusion.sum() == 0


def test_class_present_only_in_prediction_scores_zero() -> None:
    metric = SegmentationMetric(num_classes=3)
    metric.update(torch.tensor([0, 0, 2]), torch.tensor([0, 0, 0]))
    out = metric.compute()
    assert out["iou"][0] == pytest.approx(2 / 3)
    assert math.isnan(out["iou"][1]) and out["iou"][2] == 0.0
    assert out["miou"] == pytest.approx((2 / 3 + 0.0) / 2)


def test_segmentation_metric_validation() -> None:
    metric = SegmentationMetric(num_classes=3)
    with pytest.raises(ValueError, match="pred values"):
        metric.update(torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(ValueError, match="target values"):
        metric.update(torch.tensor([0]), torch.tensor([7]))
    with pytest.raises(ValueError, match="differ"):
        metric.update(torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="integer"):
        metric.update(torch.tensor([0.0]), torch.tensor([0]))


def test_empty_metric_is_nan() -> None:
    out = scores_from_confusion(np.zeros((2, 2), dtype=np.int64))
    assert math.isnan(out["miou"]) and math.isnan(out["pixel_acc"])


def test_class_names_iou_skips_nan() -> None:
    names = ("background", "cat", "dog")
    assert class_names_iou([0.5, math.nan, 0.25], names) == {"background": 0.5, "dog": 0.25}
    with pytest.raises(ValueError):
        class_names_iou([0.5], names)
