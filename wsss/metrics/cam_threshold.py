"""Sweep of the constant CAM background threshold in a single pass over the data.

The background threshold (0.15 IRN, 0.2 PSA, 0.26 SEAM, ...) is a free parameter (docs/methods.md,
"Conventions"). Pick it on a held-out subset with :class:`ThresholdSweep`, then apply the
chosen value with :func:`wsss.functional.cam.cams_to_label` on the evaluated split; tuning on
the evaluated split itself (SEAM ``--curve``) inflates the number.

Labels follow :func:`~wsss.functional.cam.cams_to_label`: a pixel is foreground class
``keys[argmax] + 1`` iff ``max_k cams > threshold`` (background wins ties), so one argmax serves
every threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from wsss.data.labels import IGNORE
from wsss.metrics.segmentation import scores_from_confusion

__all__ = ["ThresholdSweep"]


class ThresholdSweep:
    """One confusion matrix per background threshold, accumulated in O(pixels + T * N^2) per image.

    Each pixel is binned by how many thresholds lie strictly below its max CAM; cumulative sums
    over that bin turn one 3-D histogram into all T confusion matrices, so the per-image cost
    does not grow with the number of thresholds.

    Args:
        thresholds: Background thresholds to evaluate (any order, duplicates allowed).
        num_classes: Number of mask classes including background (21 for VOC).
    """

    def __init__(self, thresholds: Sequence[float], num_classes: int = 21) -> None:
        if len(thresholds) == 0:
            raise ValueError("thresholds must not be empty")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.thresholds = tuple(float(t) for t in thresholds)
        self.num_classes = num_classes
        self._sorted = sorted(set(self.thresholds))
        self._hist: Tensor | None = None  # (T + 1, N, N) int64, bin = thresholds below max cam

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._hist = None

    def update(self, cams: Tensor, keys: Tensor, gt: Tensor | np.ndarray) -> None:
        """Add one image.

        Args:
            cams: Normalised CAMs of the present classes (``K`` may be 0).
            keys: Foreground class index (0..num_classes-2) of each map.
            gt: Ground-truth mask, 0 = background, ``c + 1`` = class ``c``, 255 = ignore.

        Shape:
            - cams: ``(K, H, W)``
            - keys: ``(K,)``
            - gt: ``(H, W)``
        """
        if cams.ndim != 3 or keys.ndim != 1 or keys.shape[0] != cams.shape[0]:
            raise ValueError(
                f"expected cams (K, H, W) and keys (K,), got {tuple(cams.shape)} and "
                f"{tuple(keys.shape)}"
            )
        device = cams.device
        gt = torch.as_tensor(gt, device=device)
        if gt.shape != cams.shape[1:]:
            raise ValueError(f"gt {tuple(gt.shape)} does not match cams {tuple(cams.shape)}")
        n, n_bins = self.num_classes, len(self._sorted) + 1
        keys = keys.to(device).long()
        if keys.numel() and (int(keys.min()) < 0 or int(keys.max()) + 1 >= n):
            raise ValueError(f"keys must lie in [0, {n - 1}), got {keys.tolist()}")
        valid = gt != IGNORE
        gt = gt[valid].long()
        if gt.numel() and (int(gt.min()) < 0 or int(gt.max()) >= n):
            raise ValueError(f"gt values must lie in [0, {n}) or be {IGNORE}")
        if cams.shape[0] == 0:
            # No present class: every pixel is background whatever the threshold.
            peak = torch.full(gt.shape, -math.inf, device=device)
            fg = torch.zeros_like(gt)
        else:
            peak, index = cams.float().amax(dim=0)[valid], cams.float().argmax(dim=0)[valid]
            fg = keys[index] + 1
        bounds = torch.tensor(self._sorted, dtype=torch.float32, device=device)
        # Number of thresholds strictly below the peak: the pixel is foreground for exactly those.
        below = torch.searchsorted(bounds, peak.contiguous(), right=False)
        flat = (below * n + gt) * n + fg
        hist = torch.bincount(flat, minlength=n_bins * n * n).reshape(n_bins, n, n)
        self._hist = hist if self._hist is None else self._hist + hist.to(self._hist.device)

    def sync(self) -> None:
        """Sum the histograms of all DDP ranks into every rank (a collective: each rank calls it;
        a no-op without a process group). Ranks that scored no image contribute zeros."""
        from wsss.parallel import sum_over_ranks

        n, n_bins = self.num_classes, len(self._sorted) + 1
        hist = self._hist if self._hist is not None else torch.zeros((n_bins, n, n), dtype=torch.int64)
        summed = sum_over_ranks(hist)
        if summed is not hist:  # reduced over ranks (without DDP: unchanged, None stays None)
            self._hist = summed

    def confusions(self) -> dict[float, np.ndarray]:
        """Threshold -> (gt x pred) int64 confusion matrix ``(num_classes, num_classes)``."""
        n, n_bins = self.num_classes, len(self._sorted) + 1
        hist = (
            np.zeros((n_bins, n, n), dtype=np.int64)
            if self._hist is None
            else self._hist.cpu().numpy().astype(np.int64)
        )
        # Threshold j (ascending): pixels in bins > j keep their foreground label, pixels in
        # bins <= j become background (column 0, any gt).
        fg_part = np.cumsum(hist[::-1], axis=0)[::-1][1:]  # sum over bins j+1..T
        bg_rows = np.cumsum(hist.sum(axis=2), axis=0)[:-1]  # per gt, bins 0..j
        by_value = {}
        for j, threshold in enumerate(self._sorted):
            confusion = fg_part[j].copy()
            confusion[:, 0] += bg_rows[j]
            by_value[threshold] = confusion
        return {t: by_value[t] for t in self.thresholds}

    def compute(self) -> dict[float, float]:
        """Threshold -> mIoU (nanmean over classes, background included)."""
        return {t: scores_from_confusion(c)["miou"] for t, c in self.confusions().items()}

    def best(self) -> tuple[float, float]:
        """``(threshold, miou)`` with the highest mIoU (the first given one on ties)."""
        if self._hist is None:
            raise ValueError("ThresholdSweep.best() called before any update()")
        scores = self.compute()
        valid = {t: m for t, m in scores.items() if not math.isnan(m)}
        if not valid:
            raise ValueError("no threshold has a defined mIoU (no counted pixels)")
        threshold = max(valid, key=lambda t: valid[t])
        return threshold, valid[threshold]
