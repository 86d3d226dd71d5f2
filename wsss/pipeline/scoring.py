"""Scores shared by the label stages: label mIoU vs GT, and the CAM baseline beside it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from wsss.data.labels import IGNORE
from wsss.metrics.segmentation import SegmentationMetric, class_names_iou
from wsss.pipeline.context import StageContext, read_metrics
from wsss.pipeline.image_sets import eval_ids, no_gt_note, source


class LabelScore:
    """mIoU of label maps vs GT on the evaluated ids, with 255 (unsure) scored two ways.

    ``miou``: 255 counted as background (the repo convention, IRN eval). ``miou_confident``: only
    pixels the label commits to. ``ignored_fraction``: share of 255 over all labelled pixels.
    Only evaluated ids with a GT mask are scored (``num_evaluated``); with none, the scores are
    ``None`` (``miou: null`` in metrics.json) and ``note`` says why.
    """

    def __init__(self, ctx: StageContext) -> None:
        proto = ctx.cfg.protocol
        self.split = proto.eval_split
        self.evaluated = set(eval_ids(ctx, proto.eval_split))
        self.gt_src = source(ctx, proto.eval_split, for_eval=True)
        n = ctx.cfg.data.num_classes + 1
        self.all, self.confident = SegmentationMetric(n), SegmentationMetric(n)
        self.ignored, self.total, self.num_evaluated, self.num_without_gt = 0, 0, 0, 0

    def update(self, image_id: str, label: np.ndarray) -> None:
        label_t = torch.as_tensor(np.asarray(label)).long()
        self.ignored += int((label_t == IGNORE).sum())
        self.total += label_t.numel()
        if image_id not in self.evaluated:
            return
        if not self.gt_src.has_mask(image_id):
            self.num_without_gt += 1
            return
        gt = torch.from_numpy(self.gt_src.load_mask(image_id).astype(np.int64))
        self.all.update(label_t, gt)
        self.confident.update(label_t, torch.where(label_t == IGNORE, IGNORE, gt))
        self.num_evaluated += 1

    def result(self, with_confident: bool = True) -> dict[str, Any]:
        if not self.num_evaluated:
            out: dict[str, Any] = {"miou": None, "num_evaluated": 0, "per_class_iou": {},
                                   "ignored_fraction": self.ignored / max(self.total, 1),
                                   "note": no_gt_note(self.split, self.num_without_gt)}  # fmt: skip
            if with_confident:
                out["miou_confident"] = None
            return out
        names = ("background", *self.gt_src.class_names)
        scores = self.all.compute()
        out = {"miou": float(scores["miou"]), "num_evaluated": self.num_evaluated,
               "per_class_iou": class_names_iou(scores["iou"], names),
               "ignored_fraction": self.ignored / max(self.total, 1)}  # fmt: skip
        if with_confident:
            out["miou_confident"] = float(self.confident.compute()["miou"])
        return out


def cam_baseline(ctx: StageContext) -> float | None:
    """The CAM mIoU of the ``cam_eval`` role (eval_cam) (same eval ids) for side-by-side reporting, if it ran and
    had GT masks to score against."""
    try:
        stage_dir = ctx.read_optional("cam_eval")
        miou = read_metrics(stage_dir)["miou"] if stage_dir is not None else None
    except (FileNotFoundError, KeyError):
        return None
    return None if miou is None else float(miou)
