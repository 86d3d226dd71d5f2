"""The collapse measure: foreground fractions and the verdict on hand-made label maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss.metrics.collapse import ForegroundCounter, collapse_verdict, foreground_counts


def test_foreground_counts_skip_ignored_pixels() -> None:
    label = np.array([[0, 1, 255], [3, 0, 255]], dtype=np.uint8)
    assert foreground_counts(label) == (2, 4)
    assert foreground_counts(torch.from_numpy(label.astype(np.int64))) == (2, 4)


def test_sparse_labels_count_ignored_pixels_in_the_total() -> None:
    label = np.array([[0, 1, 255], [3, 0, 255]], dtype=np.uint8)
    assert foreground_counts(label, count_ignored=True) == (2, 6)
    counter = ForegroundCounter(count_ignored=True)
    counter.update(np.full((2, 5), 255, dtype=np.uint8))        # 0 / 10: all pixels count
    counter.update(np.full((2, 5), 2, dtype=np.uint8))          # 10 / 10
    assert counter.fraction == pytest.approx(0.5)


def test_counter_accumulates_over_maps() -> None:
    counter = ForegroundCounter()
    assert counter.fraction is None
    counter.update(np.zeros((2, 5), dtype=np.uint8))            # 0 / 10
    counter.update(np.full((2, 5), 2, dtype=np.uint8))          # 10 / 10
    counter.update(np.full((3, 3), 255, dtype=np.uint8))        # not counted
    assert counter.fraction == pytest.approx(0.5)


def test_all_background_prediction_is_a_collapse() -> None:
    v = collapse_verdict(pred_fraction=0.0, label_fraction=0.3)
    assert v["collapsed"] is True and v["fg_ratio"] == 0.0


def test_healthy_prediction_is_not_a_collapse() -> None:
    v = collapse_verdict(pred_fraction=0.25, label_fraction=0.3)
    assert v["collapsed"] is False and v["fg_ratio"] == pytest.approx(0.25 / 0.3)
    # just below / above the boundary
    assert collapse_verdict(0.074, 0.3, min_ratio=0.25)["collapsed"] is True
    assert collapse_verdict(0.076, 0.3, min_ratio=0.25)["collapsed"] is False


def test_unknown_without_label_foreground_and_bad_ratio() -> None:
    assert collapse_verdict(0.0, 0.0)["collapsed"] is None
    assert collapse_verdict(None, 0.3)["collapsed"] is None
    with pytest.raises(ValueError, match="min_ratio"):
        collapse_verdict(0.1, 0.3, min_ratio=2.0)
