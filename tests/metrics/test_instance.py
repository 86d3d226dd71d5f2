import math

import numpy as np

from wsss.metrics.instance import (
    apr,
    eval_instance_segmentation_voc,
    instances_from_semantic,
    mask_iou,
)


def _box(y0: int, y1: int, x0: int, x1: int, size: int = 10) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


A, B, C = _box(0, 4, 0, 4), _box(5, 9, 5, 9), _box(0, 3, 6, 10)


def test_mask_iou() -> None:
    half = _box(0, 4, 0, 2)
    iou = mask_iou(np.stack([A, half]), np.stack([A, B]))
    assert np.allclose(iou, [[1.0, 0.0], [0.5, 0.0]])


def test_perfect_prediction() -> None:
    gt = [np.stack([A, B]), np.stack([C])]
    gt_labels = [np.array([0, 3]), np.array([3])]
    scores = [np.array([0.9, 0.8]), np.array([0.5])]
    result = eval_instance_segmentation_voc(gt, gt_labels, scores, gt, gt_labels)
    assert result["ap"][0] == 1.0 and result["ap"][3] == 1.0
    assert np.isnan(result["ap"][1:3]).all()
    assert result["map"] == 1.0


def test_false_positive_ranked_above_true_positive() -> None:
    # Ranked: FP (0.9), TP (0.8); one GT. prec = [0, 1/2], rec = [0, 1]
    # -> all-point area = (1 - 0) * max(prec at rec >= 1) = 0.5.
    preds = [np.stack([C]), np.stack([A])]  # spread over two images: ranking is global
    result = eval_instance_segmentation_voc(
        preds,
        [np.array([0]), np.array([0])],
        [np.array([0.9]), np.array([0.8])],
        [np.zeros((0, 10, 10), bool), np.stack([A])],
        [np.array([], int), np.array([0])],
    )
    assert math.isclose(result["map"], 0.5)


def test_duplicate_detection_is_false_positive() -> None:
    # GT A, B; predictions A (0.9), A again (0.8), B (0.7) -> TP, FP, TP.
    # prec = [1, 1/2, 2/3], rec = [1/2, 1/2, 1]; AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    dup = A.copy()
    dup[0, 0] = False  # IoU 15/16 with A
    value = apr(
        [np.stack([A, dup, B])],
        [np.array([1, 1, 1])],
        [np.array([0.9, 0.8, 0.7])],
        [np.stack([A, B])],
        [np.array([1, 1])],
    )
    assert math.isclose(value, 5 / 6)


def test_low_iou_and_missed_gt() -> None:
    # Prediction with IoU 0.5 exactly counts (>= threshold); a missed GT halves the recall.
    half = _box(0, 4, 0, 2)
    value = apr(
        [np.stack([half])],
        [np.array([2])],
        [np.array([1.0])],
        [np.stack([A, B])],
        [np.array([2, 2])],
    )
    assert math.isclose(value, 0.5)
    value = apr(
        [np.stack([half])],
        [np.array([2])],
        [np.array([1.0])],
        [np.stack([A])],
        [np.array([2])],
        iou_thresh=0.6,
    )
    assert value == 0.0


def test_class_without_gt_is_excluded() -> None:
    # Class 5 has only a (false) prediction: NaN, not 0, so the mean stays 1.
    result = eval_instance_segmentation_voc(
        [np.stack([A, B])],
        [np.array([0, 5])],
        [np.array([0.9, 0.95])],
        [np.stack([A])],
        [np.array([0])],
        num_classes=20,
    )
    assert result["ap"].shape == (20,)
    assert np.isnan(result["ap"][5]) and result["ap"][0] == 1.0
    assert result["map"] == 1.0


def test_instances_from_semantic() -> None:
    mask = np.zeros((6, 8), dtype=np.uint8)
    mask[0:2, 0:2] = 1
    mask[4:6, 0:3] = 1  # second blob of class 0
    mask[0:3, 5:8] = 3
    mask[2, 2] = 255
    mask[2:4, 3] = 1  # touches the bottom blob only diagonally, (3, 3)-(4, 2)
    masks, labels = instances_from_semantic(mask)
    assert labels.tolist() == [0, 0, 2]
    assert masks.shape == (3, 6, 8) and masks.dtype == bool
    assert masks.sum() == (mask == 1).sum() + (mask == 3).sum()
    masks4, _ = instances_from_semantic(mask, connectivity=1)
    assert len(masks4) == 4  # 4-connectivity splits the column from the bottom blob
    empty, empty_labels = instances_from_semantic(np.full((4, 4), 255, np.uint8))
    assert empty.shape == (0, 4, 4) and empty_labels.shape == (0,)
