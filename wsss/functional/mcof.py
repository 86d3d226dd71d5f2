"""MCOF (Wang et al., CVPR 2018): superpixel-region operations of RegionNet and its refinement.

MCOF mines object regions on superpixels: region features are pooled from a backbone, a region
classifier (RegionNet) is trained on region labels (first from CAM seeds, later from PixelNet's
predictions), its region predictions are refined with saliency in the first iteration and
painted back to pixels to train the segmenter (PixelNet). These are the pure pieces; see
``wsss.pipeline.stages.mcof`` for the loop and docs/methods.md (MCOF) for what is from the paper.

Regions are given as a ``segments`` map of superpixel ids ``0..R-1`` (skimage SLIC with
``start_label=0``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bayes_saliency_refine", "paint_regions", "region_majority", "region_pool",
           "seed_region_labels"]


def _check_segments(segments: Tensor, shape: tuple[int, ...], what: str) -> int:
    if segments.shape != shape:
        raise ValueError(f"segments {tuple(segments.shape)} must match the {what} {shape}")
    if segments.numel() == 0 or int(segments.min()) < 0:
        raise ValueError("segments must hold region ids 0..R-1")
    return int(segments.max()) + 1


def region_pool(values: Tensor, segments: Tensor, num_regions: int | None = None) -> Tensor:
    """Mean of ``values`` over each superpixel (features, CAM scores or saliency).

    ``values`` at a coarser resolution than ``segments`` (backbone features) are upsampled
    bilinearly first. A region id without pixels gets zeros.

    Shape:
        - values: ``(C, h, w)``
        - segments: ``(H, W)`` int64 region ids in ``[0, R)``
        - output: ``(R, C)``, R = ``num_regions`` or ``segments.max() + 1``
    """
    if values.ndim != 3:
        raise ValueError(f"values must be (C, h, w), got {tuple(values.shape)}")
    height, width = segments.shape
    n = _check_segments(segments, (height, width), "image")
    n = max(n, num_regions or 0)
    if values.shape[-2:] != (height, width):
        values = F.interpolate(values[None].float(), size=(height, width), mode="bilinear",
                               align_corners=False)[0]  # fmt: skip
    flat = values.float().reshape(values.shape[0], -1).t()  # (H*W, C)
    index = segments.reshape(-1).long()
    sums = torch.zeros(n, flat.shape[1], dtype=flat.dtype).index_add_(0, index, flat)
    counts = torch.bincount(index, minlength=n).clamp(min=1).to(flat.dtype)
    return sums / counts[:, None]


def region_majority(label: Tensor, segments: Tensor, num_labels: int = 256,
                    ignore_index: int = 255) -> Tensor:  # fmt: skip
    """Majority label of each superpixel (ignored pixels do not vote; ties: smaller label).

    A region made only of ignored pixels is ``ignore_index``.

    Shape:
        - label: ``(H, W)`` int labels in ``[0, num_labels)``
        - segments: ``(H, W)`` region ids
        - output: ``(R,)`` int64
    """
    n = _check_segments(segments, tuple(label.shape), "label map")
    flat, seg = label.reshape(-1).long(), segments.reshape(-1).long()
    valid = flat != ignore_index
    votes = torch.bincount(seg[valid] * num_labels + flat[valid], minlength=n * num_labels)
    votes = votes.reshape(n, num_labels)
    winner = votes.argmax(1)
    return torch.where(votes.sum(1) > 0, winner, torch.full_like(winner, ignore_index))


def seed_region_labels(scores: Tensor, keys: Tensor, threshold: float, margin: float = 0.0,
                       ignore_index: int = 255) -> Tensor:  # fmt: skip
    """Initial object seeds on regions from region-pooled CAM scores.

    A region is class ``keys[k] + 1`` when its best score ``>= threshold + margin``, background
    when it is ``< threshold - margin``, ``ignore_index`` in between (unsure seeds do not train
    RegionNet).

    Shape:
        - scores: ``(R, K)`` CAM scores of the image's K classes in [0, 1] (K may be 0)
        - keys: ``(K,)`` 0-based class indices
        - output: ``(R,)`` int64 (0 background, ``c + 1``, ``ignore_index``)
    """
    if scores.ndim != 2 or scores.shape[1] != len(keys):
        raise ValueError(f"scores must be (R, K) with K = len(keys) = {len(keys)}, got {tuple(scores.shape)}")
    out = torch.zeros(scores.shape[0], dtype=torch.long)
    if scores.shape[1] == 0:
        return out
    best, arg = scores.max(1)
    out = torch.where(best >= threshold + margin, keys.long()[arg] + 1, out)
    unsure = (best >= threshold - margin) & (best < threshold + margin)
    return torch.where(unsure, torch.full_like(out, ignore_index), out)


def bayes_saliency_refine(fg_prob: Tensor, saliency: Tensor, eps: float = 1e-6) -> Tensor:
    """Posterior foreground probability of regions: RegionNet's prior times saliency evidence.

    ``P(fg | s) = p s / (p s + (1 - p)(1 - s))`` with prior ``p`` = RegionNet's foreground
    probability and the region's mean saliency ``s`` as the likelihood ratio's evidence
    (MCOF's saliency-guided refinement recovers salient regions RegionNet missed and drops
    non-salient ones; a saliency of 0.5 leaves the prior unchanged).

    Shape:
        - fg_prob, saliency: ``(R,)`` in [0, 1]
        - output: ``(R,)`` in [0, 1]
    """
    p = fg_prob.float().clamp(eps, 1 - eps)
    s = saliency.float().clamp(eps, 1 - eps)
    return p * s / (p * s + (1 - p) * (1 - s))


def paint_regions(region_labels: Tensor, segments: Tensor) -> Tensor:
    """Pixel label map from one label per region.

    Shape:
        - region_labels: ``(R,)``
        - segments: ``(H, W)`` region ids in ``[0, R)``
        - output: ``(H, W)``, dtype of ``region_labels``
    """
    if int(segments.max()) >= len(region_labels):
        raise ValueError(f"segments reference region {int(segments.max())}, only {len(region_labels)} labels")
    return region_labels[segments.long()]
