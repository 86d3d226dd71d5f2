"""Quality of a class-agnostic saliency map against the GT foreground.

"Salient" is what EPS uses (``round(saliency)``: above one half, i.e. a PNG value >= 128); the
GT foreground is every mask value ``1..254`` and the void value 255 is not scored. Counts are
summed over images (pixel-level precision, recall, F1) with the mean absolute error of the
continuous map against the binary foreground.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wsss.data.labels import IGNORE

__all__ = ["SaliencyScore"]

SALIENT = 128  # PNG value from which a pixel counts as salient (value / 255 > 0.5)


class SaliencyScore:
    """Accumulates salient-vs-foreground counts over images.

    Shape (``update``):
        - saliency: ``(H, W)`` uint8 0..255
        - gt: ``(H, W)`` int mask (0 background, 1..254 a class, 255 void)
    """

    def __init__(self) -> None:
        self.tp = self.fp = self.fn = self.pixels = self.gt_pixels = 0
        self.abs_error = 0.0
        self.images = 0

    def update(self, saliency: np.ndarray, gt: np.ndarray) -> None:
        saliency, gt = np.asarray(saliency), np.asarray(gt)
        if saliency.shape != gt.shape:
            raise ValueError(f"saliency {saliency.shape} and GT mask {gt.shape} must have the same shape")
        valid = gt != IGNORE
        fg = (gt > 0) & valid
        salient = (saliency >= SALIENT) & valid
        self.tp += int((salient & fg).sum())
        self.fp += int((salient & ~fg).sum())
        self.fn += int((~salient & fg).sum())
        self.pixels += int(valid.sum())
        self.gt_pixels += int(fg.sum())
        self.abs_error += float(np.abs(saliency[valid].astype(np.float64) / 255.0 - fg[valid]).sum())
        self.images += 1

    def sync(self) -> None:
        """Sum the counts of all DDP ranks into every rank (a collective: each rank calls it; a
        no-op without a process group)."""
        import torch

        from wsss.parallel import sum_over_ranks

        values = torch.tensor([self.tp, self.fp, self.fn, self.pixels, self.gt_pixels, self.abs_error,
                               self.images], dtype=torch.float64)  # fmt: skip
        tp, fp, fn, pixels, gt_pixels, abs_error, images = sum_over_ranks(values).tolist()
        self.tp, self.fp, self.fn, self.pixels, self.gt_pixels = (int(v) for v in (tp, fp, fn, pixels, gt_pixels))
        self.abs_error, self.images = abs_error, int(images)

    def compute(self, prefix: str = "") -> dict[str, Any]:
        """``{prefix}precision/recall/f1/mae/salient_fraction`` (None when nothing was scored)."""
        def ratio(a: float, b: float) -> float | None:
            return float(a) / b if b else None

        precision, recall = ratio(self.tp, self.tp + self.fp), ratio(self.tp, self.tp + self.fn)
        f1 = (2 * precision * recall / (precision + recall)
              if precision is not None and recall is not None and precision + recall > 0 else None)
        return {f"{prefix}precision": precision, f"{prefix}recall": recall, f"{prefix}f1": f1,
                f"{prefix}mae": ratio(self.abs_error, self.pixels),
                f"{prefix}salient_fraction": ratio(self.tp + self.fp, self.pixels),
                f"{prefix}gt_fraction": ratio(self.gt_pixels, self.pixels)}  # fmt: skip
