"""Label refinement for iterative self-training (MCOF-style rounds).

Between rounds the segmentation network's predictions are cleaned up by a superpixel majority
vote (regions follow image edges, so isolated wrong pixels are outvoted) and, for retraining,
only confident pixels are kept as labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from skimage.segmentation import slic
from torch import Tensor


def superpixel_refine(
    image: np.ndarray,
    label: np.ndarray,
    n_segments: int = 500,
    compactness: float = 10.0,
    ignore_index: int = 255,
) -> np.ndarray:
    """Replace every label inside a SLIC superpixel by the superpixel's majority label.

    Ignored pixels do not vote; a superpixel made only of ignored pixels stays ignored. Ties go
    to the smaller label value. SLIC runs with fixed parameters and ``start_label=0``, so the
    result is deterministic.

    Args:
        image: RGB image, uint8.
        label: predicted labels (0 background, c+1 class c, ``ignore_index`` ignore).
        n_segments: approximate number of superpixels. Default 500.
        compactness: SLIC colour/space trade-off (higher = squarer). Default 10.
        ignore_index: label value that does not vote. Default 255.

    Shape:
        image: (H, W, 3); label: (H, W) -> (H, W) uint8.
    """
    segments = slic(
        image, n_segments=n_segments, compactness=compactness, start_label=0, channel_axis=-1
    )
    segments = segments.ravel()
    flat = np.asarray(label).ravel().astype(np.int64)
    valid = flat != ignore_index
    n_seg, n_val = int(segments.max()) + 1, 256
    pair = segments[valid] * n_val + flat[valid]  # (superpixel, label) pair id
    votes = np.bincount(pair, minlength=n_seg * n_val).reshape(n_seg, n_val)
    winner = np.where(votes.sum(axis=1) > 0, votes.argmax(axis=1), ignore_index)
    return winner[segments].reshape(label.shape).astype(np.uint8)


def confident_label(probs: Tensor, threshold: float, ignore_index: int = 255) -> Tensor:
    """Argmax label, with ``ignore_index`` where the winning probability is below ``threshold``.

    Args:
        probs: class probabilities (background in channel 0).
        threshold: minimum max-probability for a pixel to keep its label.
        ignore_index: value of unconfident pixels. Default 255.

    Shape:
        probs: (..., C+1, H, W) -> (..., H, W) int64.
    """
    top, label = probs.max(dim=-3)
    return torch.where(top < threshold, torch.full_like(label, ignore_index), label)


def foreground_log_ratio(probs: Tensor, eps: float = 1e-12) -> Tensor:
    """Per pixel ``log(max_c>0 p_c / p_0)``: > 0 where the argmax is a foreground class.

    Shape:
        probs: (C+1, H, W) probabilities, background in channel 0 (C may be 0) -> (H, W).
    """
    if probs.shape[0] < 2:
        return torch.full(probs.shape[1:], float("-inf"))
    return probs[1:].max(dim=0).values.clamp(min=eps).log() - probs[0].clamp(min=eps).log()


def background_scale_for_fraction(log_ratios: Sequence[Tensor], target: float) -> float:
    """Scale ``s`` of the background probability so that argmax over ``(s p_0, p_1, ..)`` labels
    a ``target`` fraction of all pixels as foreground (self-training keeps its labels'
    foreground fraction instead of drifting towards background round after round).

    A pixel is foreground iff its :func:`foreground_log_ratio` exceeds ``log s``, so ``log s`` is
    the ``1 - target`` quantile of the pooled log-ratios (exact, no search).

    Args:
        log_ratios: :func:`foreground_log_ratio` maps of any shapes, pooled over all pixels.
        target: wanted foreground fraction in [0, 1].

    Returns ``s`` > 0 (1.0 when there are no pixels).
    """
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target foreground fraction must be in [0, 1], got {target}")
    pooled = torch.cat([r.reshape(-1).float() for r in log_ratios]) if log_ratios else torch.zeros(0)
    pooled = pooled[torch.isfinite(pooled) | (pooled < 0)]  # -inf (no fg class) stays background
    if pooled.numel() == 0:
        return 1.0
    k = int(round((1.0 - target) * pooled.numel()))
    if k <= 0:
        return float(torch.exp(pooled.min() - 1e-6).clamp(min=1e-30))
    if k >= pooled.numel():
        return float(torch.exp(pooled[torch.isfinite(pooled)].max() + 1e-6)) if torch.isfinite(pooled).any() else 1.0
    threshold = torch.kthvalue(pooled, k).values  # k pixels at or below: background
    # a hair above, so that the k-th pixel itself stays background despite rounding
    return float(torch.exp(threshold + 1e-5).clamp(min=1e-30, max=1e30))
