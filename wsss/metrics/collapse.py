"""Prediction-collapse measure for segmenters trained on pseudo-labels.

A segmenter trained on noisy, background-heavy pseudo-labels can end up predicting background
everywhere (mIoU = background IoU / number of classes, e.g. 0.116 on the 6-class synthetic set).
The symptom needs no ground truth: the fraction of pixels it predicts as foreground on held-out
images falls far below the foreground fraction of the labels it was trained on.

Pure functions (no I/O); ``wsss.pipeline.collapse`` applies them to a stage's model and labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from wsss.data.labels import BACKGROUND, IGNORE

__all__ = ["ForegroundCounter", "collapse_verdict", "foreground_counts"]


def foreground_counts(label: np.ndarray | Tensor, ignore_index: int = IGNORE,
                      count_ignored: bool = False) -> tuple[int, int]:  # fmt: skip
    """(foreground pixels, counted pixels) of a label map.

    Foreground = any value other than background (0) and ``ignore_index``. ``ignore_index``
    pixels are not counted, unless ``count_ignored``: sparse labels (SEC's cues label ~30 % of the
    pixels, background only where saliency is lowest) say how much of the *image* is surely
    foreground, while their foreground share among labelled pixels is set by the cue rules.

    Shape:
        - label: ``(...,)`` integer labels (any shape, e.g. ``(H, W)`` or ``(B, H, W)``)
    """
    lab = label if isinstance(label, Tensor) else torch.from_numpy(np.asarray(label))
    valid = lab != ignore_index
    counted = lab.numel() if count_ignored else int(valid.sum())
    return int((valid & (lab != BACKGROUND)).sum()), counted


@dataclass
class ForegroundCounter:
    """Accumulates :func:`foreground_counts` over many label maps."""

    foreground: int = 0
    counted: int = 0
    count_ignored: bool = False

    def update(self, label: np.ndarray | Tensor, ignore_index: int = IGNORE) -> None:
        fg, n = foreground_counts(label, ignore_index, self.count_ignored)
        self.foreground += fg
        self.counted += n

    @property
    def fraction(self) -> float | None:
        """Foreground / counted pixels, None when nothing was counted."""
        return self.foreground / self.counted if self.counted else None


def collapse_verdict(pred_fraction: float | None, label_fraction: float | None,
                     min_ratio: float = 0.25) -> dict:  # fmt: skip
    """Is a segmenter's prediction collapsed towards background?

    Collapsed when the predicted foreground fraction is below ``min_ratio`` times the foreground
    fraction of its training labels (a healthy segmenter predicts roughly as much foreground as
    it was taught; an all-background one predicts none).

    Args:
        pred_fraction: Foreground fraction of the predictions on validation images (argmax).
        label_fraction: Foreground fraction of the training labels (ignored pixels not counted;
            of all pixels for sparse labels such as SEC's cues).
        min_ratio: Smallest acceptable ``pred_fraction / label_fraction``.

    Returns:
        ``{"pred_fg_fraction", "label_fg_fraction", "fg_ratio", "min_ratio", "collapsed"}``;
        ``collapsed`` is None (unknown) when either fraction is missing or the labels hold no
        foreground at all (then the labels, not the segmenter, are the problem).
    """
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
    ratio = collapsed = None
    if pred_fraction is not None and label_fraction is not None and label_fraction > 0:
        ratio = pred_fraction / label_fraction
        collapsed = bool(ratio < min_ratio)
    return {"pred_fg_fraction": pred_fraction, "label_fg_fraction": label_fraction,
            "fg_ratio": ratio, "min_ratio": float(min_ratio), "collapsed": collapsed}
