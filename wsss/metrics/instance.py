"""Instance-segmentation AP at a mask-IoU threshold, PASCAL VOC protocol (IRN's APr50).

Re-implements the protocol of chainercv's ``eval_instance_segmentation_voc`` (what IRN's
``eval_ins_seg.py`` calls, docs/methods.md, "IRNet") in numpy:

* per image and class, predictions are visited by decreasing score; each takes the GT mask of the
  same class with the highest IoU. It is a true positive when that IoU is >= ``iou_thresh`` and
  the GT is not yet taken; otherwise (IoU too low, or GT already matched — a duplicate) it is a
  false positive. A prediction does not fall back to its second-best GT;
* per class, all predictions of the split are ranked by score, precision/recall are accumulated
  and AP is the all-point interpolated area under the PR curve (VOC2010+, ``use_07_metric=False``);
* classes without GT instances get AP NaN and are left out of the mean.

pycocotools differs (101-point interpolation, area ranges, crowd handling, up to 100 detections),
so it is not used. Ties in score are broken stably (chainercv's quicksort order is unspecified).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.ndimage

from wsss.data.labels import BACKGROUND, IGNORE

__all__ = ["InstanceAP", "apr", "eval_instance_segmentation_voc", "instances_from_semantic", "mask_iou", "match_image"]


def mask_iou(masks_a: np.ndarray, masks_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of two sets of boolean masks.

    Shape:
        - masks_a: ``(N, H, W)`` bool; masks_b: ``(M, H, W)`` bool
        - output: ``(N, M)`` float64
    """
    a = masks_a.reshape(len(masks_a), -1).astype(np.float64)
    b = masks_b.reshape(len(masks_b), -1).astype(np.float64)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _match_class(
    pred_masks: np.ndarray,
    pred_scores: np.ndarray,
    gt_masks: np.ndarray,
    iou_thresh: float,
) -> list[int]:
    """1 (TP) / 0 (FP) for one image and one class, in the order of ``pred_scores``."""
    order = np.argsort(-pred_scores, kind="stable")
    flags = np.zeros(len(pred_scores), dtype=np.int64)
    if len(gt_masks) == 0 or len(order) == 0:
        return flags.tolist()
    iou = mask_iou(pred_masks[order], gt_masks)
    best = iou.argmax(axis=1)
    taken = np.zeros(len(gt_masks), dtype=bool)
    for rank, (gt_index, best_iou) in enumerate(zip(best, iou.max(axis=1))):
        if best_iou >= iou_thresh and not taken[gt_index]:
            flags[order[rank]] = 1
        if best_iou >= iou_thresh:
            taken[gt_index] = True
    return flags.tolist()


def _voc_ap(tp_flags: np.ndarray, n_pos: int) -> float:
    """All-point interpolated AP of score-ranked TP flags (VOC2010+)."""
    tp = np.cumsum(tp_flags == 1)
    fp = np.cumsum(tp_flags == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = tp / (tp + fp)
    rec = tp / n_pos
    mpre = np.concatenate(([0.0], np.nan_to_num(prec), [0.0]))
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def match_image(pred_masks: np.ndarray, pred_labels: np.ndarray, pred_scores: np.ndarray,
                gt_masks: np.ndarray, gt_labels: np.ndarray,
                iou_thresh: float = 0.5) -> dict[int, tuple[int, list[float], list[int]]]:  # fmt: skip
    """One image's part of the VOC APr: per class present in the predictions or the GT,
    ``(number of GT instances, prediction scores, TP flags)`` (the masks are not needed after)."""
    p_label, g_label = np.asarray(pred_labels, np.int64), np.asarray(gt_labels, np.int64)
    p_score = np.asarray(pred_scores, np.float64)
    out = {}
    for cls in np.unique(np.concatenate([p_label, g_label])).tolist():
        keep_p, keep_g = p_label == cls, g_label == cls
        flags = _match_class(np.asarray(pred_masks)[keep_p], p_score[keep_p], np.asarray(gt_masks)[keep_g],
                             iou_thresh)  # fmt: skip
        out[cls] = (int(keep_g.sum()), p_score[keep_p].tolist(), flags)
    return out


class InstanceAP:
    """Streaming form of :func:`eval_instance_segmentation_voc`: :meth:`update` one image at a
    time (its masks are matched at once and dropped; only each prediction's score and TP flag
    are kept; :meth:`add` takes a :func:`match_image` made elsewhere), :meth:`compute` at the end.
    Memory grows with the number of predictions, not with the images' pixels."""

    def __init__(self, iou_thresh: float = 0.5) -> None:
        self.iou_thresh = iou_thresh
        self.n_pos: dict[int, int] = {}
        self.scores: dict[int, list[float]] = {}
        self.flags: dict[int, list[int]] = {}
        self.num_images = 0

    def update(self, pred_masks: np.ndarray, pred_labels: np.ndarray, pred_scores: np.ndarray,
               gt_masks: np.ndarray, gt_labels: np.ndarray) -> None:  # fmt: skip
        """One image: ``(R, H, W)`` bool masks with ``(R,)`` labels and scores; ``(G, H, W)`` GT."""
        self.add(match_image(pred_masks, pred_labels, pred_scores, gt_masks, gt_labels, self.iou_thresh))

    def add(self, matched: dict[int, tuple[int, list[float], list[int]]]) -> None:
        """One image's :func:`match_image` result (images must be added in a fixed order: equal
        scores keep it when ranked)."""
        for cls, (n_pos, scores, flags) in matched.items():
            self.n_pos[cls] = self.n_pos.get(cls, 0) + n_pos
            self.scores.setdefault(cls, []).extend(scores)
            self.flags.setdefault(cls, []).extend(flags)
        self.num_images += 1

    def compute(self, num_classes: int | None = None) -> dict[str, np.ndarray | float]:
        """``{"ap": (C,) float64 with NaN for classes without GT, "map": nan-mean of ap}``;
        ``num_classes`` defaults to ``max label + 1`` (as chainercv)."""
        size = num_classes if num_classes is not None else (max(self.n_pos) + 1 if self.n_pos else 0)
        ap = np.full(size, np.nan)
        for cls, count in self.n_pos.items():
            if count == 0 or cls >= size:
                continue
            order = np.argsort(-np.asarray(self.scores[cls]), kind="stable")
            ap[cls] = _voc_ap(np.asarray(self.flags[cls], np.int64)[order], count)
        with np.errstate(all="ignore"):
            mean = float(np.nanmean(ap)) if np.any(~np.isnan(ap)) else float("nan")
        return {"ap": ap, "map": mean}


def eval_instance_segmentation_voc(
    pred_masks: Sequence[np.ndarray],
    pred_labels: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_masks: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray],
    iou_thresh: float = 0.5,
    num_classes: int | None = None,
) -> dict[str, np.ndarray | float]:
    """VOC instance-segmentation AP per class and its mean over classes with GT
    (:class:`InstanceAP` over all images at once).

    Args:
        pred_masks: Per image, predicted masks.
        pred_labels: Per image, foreground class index (0..19) of each prediction.
        pred_scores: Per image, confidence of each prediction.
        gt_masks: Per image, ground-truth instance masks.
        gt_labels: Per image, class index of each GT instance.
        iou_thresh: Mask-IoU threshold. Default 0.5 (APr50).
        num_classes: Length of the ``ap`` array; default ``max label + 1`` (as chainercv).

    Returns:
        ``{"ap": (C,) float64 with NaN for classes without GT, "map": nan-mean of ap}``.

    Shape:
        - pred_masks[i]: ``(R_i, H_i, W_i)`` bool; pred_labels[i], pred_scores[i]: ``(R_i,)``
        - gt_masks[i]: ``(G_i, H_i, W_i)`` bool; gt_labels[i]: ``(G_i,)``
    """
    if (
        not len(pred_masks)
        == len(pred_labels)
        == len(pred_scores)
        == len(gt_masks)
        == len(gt_labels)
    ):
        raise ValueError("all inputs need one entry per image")
    meter = InstanceAP(iou_thresh)
    for image in zip(pred_masks, pred_labels, pred_scores, gt_masks, gt_labels):
        meter.update(*image)
    return meter.compute(num_classes)


def apr(
    pred_masks: Sequence[np.ndarray],
    pred_labels: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_masks: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray],
    iou_thresh: float = 0.5,
) -> float:
    """mAP^r at ``iou_thresh`` (default 0.5: APr50); see :func:`eval_instance_segmentation_voc`."""
    result = eval_instance_segmentation_voc(
        pred_masks, pred_labels, pred_scores, gt_masks, gt_labels, iou_thresh
    )
    return float(result["map"])


def instances_from_semantic(
    mask: np.ndarray, connectivity: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Fallback GT instances: connected components of each class of a semantic mask.

    An approximation of ``SegmentationObject``: touching objects of one class merge into one
    instance (VOC's 255 outlines usually keep them apart), and an object split by occlusion
    becomes several. Background (0) and ignore (255) are skipped.

    Args:
        mask: Semantic mask, 0 = background, ``c + 1`` = class ``c``, 255 = ignore.
        connectivity: 1 = 4-connected, 2 = 8-connected (default, fewer spurious splits).

    Returns:
        ``(masks, labels)``: ``(N, H, W)`` bool and ``(N,)`` int64 class indices 0..19.

    Shape:
        - mask: ``(H, W)``
    """
    structure = scipy.ndimage.generate_binary_structure(2, connectivity)
    masks, labels = [], []
    for value in np.unique(mask).tolist():
        if value in (BACKGROUND, IGNORE):
            continue
        components, count = scipy.ndimage.label(mask == value, structure=structure)
        for comp in range(1, count + 1):
            masks.append(components == comp)
            labels.append(value - 1)
    if not masks:
        return np.zeros((0, *mask.shape), dtype=bool), np.zeros(0, dtype=np.int64)
    return np.stack(masks), np.asarray(labels, dtype=np.int64)
