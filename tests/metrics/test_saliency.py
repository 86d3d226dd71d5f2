"""Saliency quality counts against a GT foreground (wsss.metrics.saliency)."""

from __future__ import annotations

import numpy as np
import pytest

from wsss.metrics.saliency import SaliencyScore


def test_counts_precision_recall_and_mae_skip_void() -> None:
    score = SaliencyScore()
    score.update(np.array([[0, 127, 128, 255]], np.uint8), np.array([[0, 1, 3, 255]]))
    # scored pixels: 3 (void skipped); salient (>= 128): only the third; foreground: 2nd and 3rd
    out = score.compute()
    assert out["precision"] == 1.0 and out["recall"] == 0.5
    assert out["f1"] == pytest.approx(2 / 3)
    assert out["mae"] == pytest.approx((0 + 128 / 255 + 127 / 255) / 3)
    assert out["salient_fraction"] == pytest.approx(1 / 3) and out["gt_fraction"] == pytest.approx(2 / 3)
    score.update(np.array([[200, 0]], np.uint8), np.array([[0, 0]]))  # one false positive more
    out = score.compute("cam_")
    assert out["cam_precision"] == 0.5 and out["cam_recall"] == 0.5 and score.images == 2


def test_nothing_scored_is_none_and_shapes_must_match() -> None:
    assert SaliencyScore().compute() == {"precision": None, "recall": None, "f1": None, "mae": None,
                                         "salient_fraction": None, "gt_fraction": None}
    with pytest.raises(ValueError, match="same shape"):
        SaliencyScore().update(np.zeros((2, 2), np.uint8), np.zeros((2, 3)))
