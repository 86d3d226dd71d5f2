"""ThresholdSweep must equal one SegmentationMetric per threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsss.functional.cam import cams_to_label
from wsss.metrics.cam_threshold import ThresholdSweep
from wsss.metrics.segmentation import SegmentationMetric


def test_threshold_sweep_hand_computed() -> None:
    cams = torch.tensor([[[0.1, 0.3, 0.6, 0.9]]])  # one class (key 1 -> mask value 2)
    keys = torch.tensor([1])
    gt = torch.tensor([[0, 2, 2, 255]])
    sweep = ThresholdSweep([0.5, 0.2], num_classes=3)
    sweep.update(cams, keys, gt)
    confusions = sweep.confusions()
    # t = 0.2: pred [0, 2, 2, (ignored)] -> perfect on classes 0 and 2, class 1 absent.
    np.testing.assert_array_equal(confusions[0.2], [[1, 0, 0], [0, 0, 0], [0, 0, 2]])
    # t = 0.5: pred [0, 0, 2] -> IoU_0 = 1/2, IoU_2 = 1/2.
    np.testing.assert_array_equal(confusions[0.5], [[1, 0, 0], [0, 0, 0], [1, 0, 1]])
    scores = sweep.compute()
    assert list(scores) == [0.5, 0.2]
    assert scores[0.2] == pytest.approx(1.0) and scores[0.5] == pytest.approx(0.5)
    assert sweep.best() == (0.2, pytest.approx(1.0))


def test_threshold_sweep_equals_separate_metrics() -> None:
    rng = np.random.default_rng(0)
    thresholds = [0.05, 0.15, 0.2, 0.3, 0.3, 0.45, 0.7, 1.0]
    num_classes = 6
    sweep = ThresholdSweep(thresholds, num_classes=num_classes)
    metrics = {t: SegmentationMetric(num_classes) for t in thresholds}
    for n_present in (2, 0, 1, 3, 2):
        keys = torch.from_numpy(np.sort(rng.choice(num_classes - 1, n_present, replace=False)))
        cams = torch.from_numpy(rng.random((n_present, 7, 9)).astype(np.float32))
        cams[:, 0, 0] = 0.3  # exact ties with a threshold: background must win, as in argmax
        gt = torch.from_numpy(rng.integers(0, num_classes, (7, 9)))
        gt[rng.random((7, 9)) < 0.2] = 255
        sweep.update(cams, keys, gt)
        for t, metric in metrics.items():
            metric.update(cams_to_label(cams, keys, t), gt)
    for t, confusion in sweep.confusions().items():
        np.testing.assert_array_equal(confusion, metrics[t].confusion)
    scores = sweep.compute()
    for t in thresholds:
        assert scores[t] == pytest.approx(metrics[t].compute()["miou"])
    best_t, best_miou = sweep.best()
    assert best_miou == pytest.approx(max(scores.values()))
    assert scores[best_t] == best_miou


def test_threshold_sweep_errors_and_reset() -> None:
    with pytest.raises(ValueError):
        ThresholdSweep([], num_classes=3)
    sweep = ThresholdSweep([0.1], num_classes=3)
    with pytest.raises(ValueError, match="before any update"):
        sweep.best()
    assert math.isnan(sweep.compute()[0.1])
    with pytest.raises(ValueError, match="keys"):
        sweep.update(torch.zeros(1, 2, 2), torch.tensor([2]), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="gt"):
        sweep.update(torch.zeros(1, 2, 2), torch.tensor([0]), torch.full((2, 2), 5))
    sweep.update(torch.ones(1, 2, 2), torch.tensor([0]), torch.ones(2, 2, dtype=torch.long))
    assert sweep.best() == (0.1, 1.0)
    sweep.reset()
    assert math.isnan(sweep.compute()[0.1])
