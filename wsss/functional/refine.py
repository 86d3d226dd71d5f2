"""Label refinement for iterative self-training (MCOF-style rounds).

Between rounds the segmentation network's predictions are cleaned up by a superpixel majority
vote (regions follow image edges, so isolated wrong pixels are outvoted) and, for retraining,
only confident pixels are kept as labels.
"""

from __future__ import annotations

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
