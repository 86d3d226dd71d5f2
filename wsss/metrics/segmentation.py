"""Semantic-segmentation scores from an accumulated confusion matrix (IRN/chainercv convention).

The confusion matrix is accumulated over the whole split (not averaged per image); rows are
ground truth, columns predictions. ``IoU_c = TP / (GT_c + Pred_c - TP)``; classes whose union is
empty are NaN and left out of the mean (``nanmean``, as IRN's ``eval_cam``/``eval_sem_seg``).
Background is class 0 and counts in the mean (docs/methods.md, "Conventions", "IRNet").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix

from wsss.data.labels import BACKGROUND, IGNORE

__all__ = ["SegmentationMetric", "class_names_iou", "scores_from_confusion"]


def scores_from_confusion(confusion: np.ndarray | Tensor) -> dict[str, Any]:
    """IoU per class, mIoU and pixel accuracy from a (gt x pred) confusion matrix.

    Args:
        confusion: Square count matrix, ``confusion[g, p]`` = pixels with GT ``g`` predicted ``p``.

    Returns:
        ``{"miou": float, "iou": list[float], "pixel_acc": float, "confusion": int64 ndarray}``;
        ``iou[c]`` is NaN when class ``c`` occurs in neither GT nor prediction, ``miou`` is the
        mean of the non-NaN IoUs (NaN if none), ``pixel_acc`` is NaN with no counted pixel.

    Shape:
        - confusion: ``(N, N)``
    """
    if isinstance(confusion, Tensor):
        confusion = confusion.detach().cpu().numpy()
    confusion = np.asarray(confusion, dtype=np.int64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be square (N, N), got shape {confusion.shape}")
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=1) + confusion.sum(axis=0) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    valid = ~np.isnan(iou)
    total = confusion.sum()
    return {
        "miou": float(iou[valid].mean()) if valid.any() else math.nan,
        "iou": [float(v) for v in iou],
        "pixel_acc": float(tp.sum() / total) if total > 0 else math.nan,
        "confusion": confusion.copy(),
    }


class SegmentationMetric(nn.Module):
    """Accumulates a confusion matrix of integer predictions against ground-truth masks.

    A thin wrapper over torchmetrics' ``MulticlassConfusionMatrix`` (so it moves with a
    LightningModule and, with ``sync=True``, sums DDP ranks in ``compute``). Conventions:

    * GT pixels equal to 255 (:data:`~wsss.data.labels.IGNORE`) are not counted;
    * predictions equal to 255 are scored as **background** (IRN ``eval_sem_seg`` sets them to 0);
      pseudo labels that keep an "unsure" band therefore pay for it rather than escape it;
    * any other value outside ``[0, num_classes)`` raises ``ValueError``.

    Args:
        num_classes: Number of mask classes including background (21 for VOC).
        sync: Sum the ranks' matrices in ``compute`` (a collective: every rank must call it).
            False for the pipeline's rank-0-only stages, True in LightningModules.
    """

    def __init__(self, num_classes: int = 21, sync: bool = False) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        # Own range checks below are cheaper than torchmetrics' torch.unique-based validation.
        self.confmat = MulticlassConfusionMatrix(
            num_classes, ignore_index=IGNORE, validate_args=False, sync_on_compute=sync
        )

    def update(self, pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> None:
        """Add one prediction / ground-truth pair (or a batch of them).

        Shape:
            - pred: ``(H, W)`` (or any shape) integer
            - target: same shape as ``pred``, integer, 255 = ignore
        """
        device = self.confmat.confmat.device
        pred = torch.as_tensor(pred, device=device)
        target = torch.as_tensor(target, device=device)
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError("pred and target must be integer label maps")
        pred = torch.where(pred == IGNORE, BACKGROUND, pred.long())
        target = target.long()
        _check_range("pred", pred, self.num_classes)
        _check_range("target", target[target != IGNORE], self.num_classes)
        self.confmat.update(pred, target)

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.confmat.reset()

    @property
    def confusion(self) -> np.ndarray:
        """The accumulated (gt x pred) confusion matrix, int64, ``(num_classes, num_classes)``."""
        return self.confmat.confmat.detach().cpu().numpy().astype(np.int64)

    def compute(self) -> dict[str, Any]:
        """Scores of everything accumulated: see :func:`scores_from_confusion`."""
        return scores_from_confusion(self.confmat.compute())

    def forward(self, pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> None:
        """Alias of :meth:`update`."""
        self.update(pred, target)


def _check_range(name: str, values: Tensor, num_classes: int) -> None:
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= num_classes):
        raise ValueError(
            f"{name} values must lie in [0, {num_classes}) (or be {IGNORE}), got "
            f"[{int(values.min())}, {int(values.max())}]"
        )


def class_names_iou(iou: Sequence[float], names: Sequence[str]) -> dict[str, float]:
    """``{name: iou}`` for the classes with a defined (non-NaN) IoU.

    Args:
        iou: Per-class IoU, e.g. ``compute()["iou"]``.
        names: One name per class, e.g. ``("background", *VOC_CLASSES)``.
    """
    if len(iou) != len(names):
        raise ValueError(f"{len(iou)} IoU values but {len(names)} names")
    return {name: float(v) for name, v in zip(names, iou) if not math.isnan(float(v))}
