"""Measures of the phenomena WSSS methods target, computed on any label map against the GT mask.

* **Partial activation** (CAMs fire on the discriminative part only): object ``recall`` (GT object
  pixels given their correct class) against ``precision`` (pixels labelled foreground that carry
  the correct class). With the synthetic part masks (``<root>/SyntheticMeta``, see
  :mod:`wsss.data.synthetic`) also ``body_recall``: recall on object pixels outside the class's
  key part (the textured part CAMs fire on), and ``key_recall`` on the key part itself.
* **Context false positives** (a class learnt from its usual background): ``context_fp``, the
  fraction of GT-background pixels labelled with a foreground class present in the image. With
  the synthetic background-kind maps also ``context_fp_typical``: the same restricted to background
  of the kind that is the class's typical context (water for boat), summed over (present class,
  pixel) pairs, and ``context_fp_other`` on the other background kinds.
* **Boundary adherence**: ``boundary_f`` (BF score, Csurka et al. 2013; DAVIS' F): precision and
  recall of the label map's class boundaries against the GT's within a tolerance of
  ``ceil(tolerance_fraction * image diagonal)`` pixels (0.008 as DAVIS: 2 px on the 160x120
  synthetic images, 5 px on 500x375 VOC images).

Every measure is a ratio of pixel counts summed over the dataset (not a mean of per-image ratios).
GT pixels labelled 255 (VOC's void band) are not counted; label pixels 255 (unsure) count as
"no class": never correct, never a false positive. For boundaries, 255 pixels of GT and label are
filled with the class of the nearest labelled pixel first, so the GT boundary runs through the
middle of the void band and unsure regions add no boundary of their own.

``python -m wsss.metrics.phenomena RUN_DIR ...`` applies them to the stages of finished runs
(:mod:`wsss.pipeline.phenomena`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

IGNORE = 255
KEY_PART = 2  # synthetic part ids: 0 none, 1 body, 2 key part, 3 dark detail
TOLERANCE_FRACTION = 0.008  # of the image diagonal (DAVIS' bound_th)

__all__ = ["PhenomenaMeter", "activation_counts", "boundary_counts", "boundary_map",
           "boundary_tolerance", "context_counts", "fill_ignored", "resize_nearest"]  # fmt: skip


# --------------------------------------------------------------------------- boundaries
def boundary_map(label: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour has another value (one-pixel-thin).

    Shape:
        - label: ``(H, W)`` integer label map
    """
    label = np.asarray(label)
    edge = np.zeros(label.shape, bool)
    edge[:, :-1] |= label[:, 1:] != label[:, :-1]
    edge[:-1] |= label[1:] != label[:-1]
    return edge


def fill_ignored(label: np.ndarray, ignore_index: int = IGNORE) -> np.ndarray | None:
    """``label`` with every ``ignore_index`` pixel set to its nearest labelled pixel's value
    (Euclidean; ties by scipy's EDT order); None when no pixel is labelled.

    Shape:
        - label: ``(H, W)`` -> ``(H, W)`` same dtype
    """
    label = np.asarray(label)
    void = label == ignore_index
    if not void.any():
        return label
    if void.all():
        return None
    idx = ndimage.distance_transform_edt(void, return_distances=False, return_indices=True)
    return label[tuple(idx)]


def boundary_tolerance(shape: Sequence[int], fraction: float = TOLERANCE_FRACTION) -> int:
    """Tolerance in pixels: ``ceil(fraction * diagonal)``, at least 1 (DAVIS)."""
    return max(1, math.ceil(fraction * math.hypot(shape[0], shape[1])))


def _near(edge: np.ndarray, tolerance: float) -> np.ndarray:
    """(H, W) bool: within Euclidean ``tolerance`` of some ``edge`` pixel."""
    if not edge.any():
        return np.zeros(edge.shape, bool)
    return ndimage.distance_transform_edt(~edge) <= tolerance


def boundary_counts(label: np.ndarray, gt: np.ndarray, tolerance: float | None = None,
                    ignore_index: int = IGNORE) -> np.ndarray:  # fmt: skip
    """Boundary matches of one image: ``[matched label px, label px, matched GT px, GT px]``.

    A label boundary pixel is matched when a GT boundary pixel lies within ``tolerance`` pixels
    (Euclidean), and vice versa. Both maps have their ``ignore_index`` pixels filled first
    (:func:`fill_ignored`). ``tolerance`` None = :func:`boundary_tolerance` of the image.

    Shape:
        - label, gt: ``(H, W)`` integer label maps -> ``(4,)`` int64
    """
    label, gt = np.asarray(label), np.asarray(gt)
    if label.shape != gt.shape:
        raise ValueError(f"label {label.shape} and GT {gt.shape} must have the same shape")
    tol = boundary_tolerance(gt.shape) if tolerance is None else tolerance
    filled_gt, filled = fill_ignored(gt, ignore_index), fill_ignored(label, ignore_index)
    b_gt = boundary_map(filled_gt) if filled_gt is not None else np.zeros(gt.shape, bool)
    b_label = boundary_map(filled) if filled is not None else np.zeros(gt.shape, bool)
    return np.array([(b_label & _near(b_gt, tol)).sum(), b_label.sum(),
                     (b_gt & _near(b_label, tol)).sum(), b_gt.sum()], dtype=np.int64)  # fmt: skip


# --------------------------------------------------------------------------- activation / context
def activation_counts(label: np.ndarray, gt: np.ndarray, parts: np.ndarray | None = None,
                      ignore_index: int = IGNORE) -> dict[str, int]:  # fmt: skip
    """Pixel counts behind recall / precision (and body / key-part recall given ``parts``).

    Keys: ``valid`` (GT not ignored), ``labelled`` (valid, label not ignored), ``object`` (GT
    foreground), ``object_correct`` (GT foreground with label == GT), ``pred_fg`` (valid, label a
    foreground class), ``pred_fg_correct``; with ``parts``: ``body``/``body_correct`` (object pixels
    whose part id is not :data:`KEY_PART`) and ``key``/``key_correct``.

    Shape:
        - label, gt, parts: ``(H, W)`` integer maps (parts: 0 none, 1 body, 2 key, 3 detail)
    """
    label, gt = np.asarray(label), np.asarray(gt)
    if label.shape != gt.shape:
        raise ValueError(f"label {label.shape} and GT {gt.shape} must have the same shape")
    valid = gt != ignore_index
    obj = valid & (gt != 0)
    correct = label == gt
    pred_fg = valid & (label != 0) & (label != ignore_index)
    out = {"valid": int(valid.sum()), "labelled": int((valid & (label != ignore_index)).sum()),
           "object": int(obj.sum()), "object_correct": int((obj & correct).sum()),
           "pred_fg": int(pred_fg.sum()), "pred_fg_correct": int((pred_fg & correct).sum())}  # fmt: skip
    if parts is not None:
        parts = np.asarray(parts)
        if parts.shape != gt.shape:
            raise ValueError(f"parts {parts.shape} and GT {gt.shape} must have the same shape")
        key = obj & (parts == KEY_PART)
        body = obj & ~key
        out.update(body=int(body.sum()), body_correct=int((body & correct).sum()),
                   key=int(key.sum()), key_correct=int((key & correct).sum()))
    return out


def context_counts(label: np.ndarray, gt: np.ndarray, kinds: np.ndarray | None = None,
                   typical: Mapping[int, int] | None = None,
                   ignore_index: int = IGNORE) -> dict[str, int]:  # fmt: skip
    """Pixel counts behind the context false-positive rates.

    Keys: ``background`` (GT background pixels), ``background_fp`` (of those, labelled with a
    foreground class present in the image's GT). Given ``kinds`` (background kind per pixel) and
    ``typical`` (GT value -> its typical background kind; classes without one are left out):
    ``typical``/``typical_fp`` summed over the present classes c with a typical kind k(c): GT
    background pixels of kind k(c), and those labelled c; ``other``/``other_fp`` the same on the
    background pixels of any other kind.

    Shape:
        - label, gt, kinds: ``(H, W)`` integer maps
    """
    label, gt = np.asarray(label), np.asarray(gt)
    if label.shape != gt.shape:
        raise ValueError(f"label {label.shape} and GT {gt.shape} must have the same shape")
    background = gt == 0
    present = [int(v) for v in np.unique(gt) if v not in (0, ignore_index)]
    out = {"background": int(background.sum()),
           "background_fp": int((background & np.isin(label, present)).sum())}  # fmt: skip
    if kinds is not None and typical is not None:
        kinds = np.asarray(kinds)
        if kinds.shape != gt.shape:
            raise ValueError(f"kinds {kinds.shape} and GT {gt.shape} must have the same shape")
        counts = dict.fromkeys(("typical", "typical_fp", "other", "other_fp"), 0)
        for c in present:
            if c not in typical:
                continue
            is_typical = kinds == typical[c]
            as_c = label == c
            for key, where in (("typical", background & is_typical), ("other", background & ~is_typical)):
                counts[key] += int(where.sum())
                counts[f"{key}_fp"] += int((where & as_c).sum())
        out.update(counts)
    return out


def resize_nearest(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of a (H, W) map to ``shape`` (source index ``floor(i * H / h)``,
    as ``torch.nn.functional.interpolate(mode="nearest")``); e.g. GT to SEC's cue grid."""
    array = np.asarray(array)
    if tuple(array.shape) == tuple(shape):
        return array
    rows = np.minimum((np.arange(shape[0]) * (array.shape[0] / shape[0])).astype(np.int64), array.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * (array.shape[1] / shape[1])).astype(np.int64), array.shape[1] - 1)
    return array[rows[:, None], cols[None, :]]


# --------------------------------------------------------------------------- accumulation
def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


class PhenomenaMeter:
    """Sums the counts of :func:`activation_counts`, :func:`context_counts` and
    :func:`boundary_counts` over images; :meth:`result` gives the dataset-level ratios.

    ``typical``: GT value (class index + 1) -> typical background kind, for ``context_fp_typical``.
    ``tolerance_fraction``: boundary tolerance per image, as a fraction of its diagonal.
    """

    def __init__(self, typical: Mapping[int, int] | None = None,
                 tolerance_fraction: float = TOLERANCE_FRACTION) -> None:  # fmt: skip
        self.typical = dict(typical) if typical is not None else None
        self.tolerance_fraction = float(tolerance_fraction)
        self.counts: dict[str, int] = {}
        self.boundary = np.zeros(4, np.int64)
        self.num_images = 0

    def update(self, label: np.ndarray, gt: np.ndarray, parts: np.ndarray | None = None,
               kinds: np.ndarray | None = None) -> None:  # fmt: skip
        """Add one image. Shape: label, gt, parts, kinds ``(H, W)`` (parts/kinds optional)."""
        label, gt = np.asarray(label), np.asarray(gt)
        counts = {**activation_counts(label, gt, parts),
                  **context_counts(label, gt, kinds, self.typical if kinds is not None else None)}  # fmt: skip
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0) + value
        tol = boundary_tolerance(gt.shape, self.tolerance_fraction)
        self.boundary += boundary_counts(label, gt, tol)
        self.num_images += 1

    def result(self) -> dict[str, Any]:
        """Dataset-level measures (None where a denominator is zero or the data lacks the metadata).

        ``recall``, ``precision``, ``body_recall``, ``key_recall``, ``labelled_fraction`` (share of
        non-void GT pixels the label commits to: < 1 for partial labels such as SEC cues),
        ``context_fp``, ``context_fp_typical``, ``context_fp_other``, ``boundary_precision``,
        ``boundary_recall``, ``boundary_f``, ``boundary_tolerance_fraction``, ``num_images``.
        """
        c = self.counts
        get = c.get
        bp = _ratio(int(self.boundary[0]), int(self.boundary[1]))
        br = _ratio(int(self.boundary[2]), int(self.boundary[3]))
        if br is None:  # no GT boundary anywhere
            bf = None
        elif bp is None or bp + br == 0:  # no label boundary (e.g. all background): recall 0
            bf = 0.0
        else:
            bf = 2 * bp * br / (bp + br)
        return {
            "recall": _ratio(get("object_correct", 0), get("object", 0)),
            "precision": _ratio(get("pred_fg_correct", 0), get("pred_fg", 0)),
            "body_recall": _ratio(get("body_correct", 0), get("body", 0)) if "body" in c else None,
            "key_recall": _ratio(get("key_correct", 0), get("key", 0)) if "key" in c else None,
            "labelled_fraction": _ratio(get("labelled", 0), get("valid", 0)),
            "context_fp": _ratio(get("background_fp", 0), get("background", 0)),
            "context_fp_typical": _ratio(get("typical_fp", 0), get("typical", 0)) if "typical" in c else None,
            "context_fp_other": _ratio(get("other_fp", 0), get("other", 0)) if "other" in c else None,
            "boundary_precision": bp, "boundary_recall": br, "boundary_f": bf,
            "boundary_tolerance_fraction": self.tolerance_fraction,
            "num_images": self.num_images,
        }  # fmt: skip


if __name__ == "__main__":  # the CLI lives with the pipeline code that reads runs
    from wsss.pipeline.phenomena import main

    raise SystemExit(main())
