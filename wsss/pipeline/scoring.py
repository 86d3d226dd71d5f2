"""Scores shared by the label stages: label mIoU vs GT, the phenomenon measures (partial
activation, context false positives, boundary F; :mod:`wsss.metrics.phenomena`) and the CAM
baseline beside them."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from wsss.data.labels import IGNORE
from wsss.data.sources import Source
from wsss.metrics.phenomena import PhenomenaMeter, resize_nearest
from wsss.metrics.segmentation import SegmentationMetric, class_names_iou
from wsss.pipeline.context import StageContext, read_metrics
from wsss.pipeline.image_sets import eval_ids, no_gt_note, source


class PhenomenaScore:
    """:class:`~wsss.metrics.phenomena.PhenomenaMeter` fed by image id: reads the GT mask of
    ``gt_src`` and, on a synthetic tree, the part and background-kind maps of its sidecar.

    Label maps smaller than the image (SEC's cue grid) are scored against GT (and maps) resized
    to them by nearest neighbour. Images without a GT mask are skipped.
    """

    def __init__(self, gt_src: Source, meta: Any = None) -> None:
        self.gt_src, self.meta = gt_src, meta
        self.meter = PhenomenaMeter(typical=meta.typical if meta is not None else None)

    @classmethod
    def for_stage(cls, ctx: StageContext, split: str | None = None) -> PhenomenaScore:
        """Against the GT masks of ``split`` (default: the protocol's eval split) of ``ctx``'s data."""
        from wsss.data.synthetic import load_synthetic_meta

        gt_src = source(ctx, split or ctx.cfg.protocol.eval_split, for_eval=True)
        return cls(gt_src, load_synthetic_meta(ctx.data_root()))

    def update(self, image_id: str, label: np.ndarray, gt: np.ndarray | None = None) -> bool:
        """Score one label map (H, W) (or a coarser grid); False when the image has no GT mask.
        ``gt``: the image's GT mask when the caller has already read it (not read again)."""
        if gt is None:
            if not self.gt_src.has_mask(image_id):
                return False
            gt = self.gt_src.load_mask(image_id)
        label = np.asarray(label)
        parts = kinds = None
        if self.meta is not None and self.meta.has(image_id):
            parts, kinds = self.meta.parts(image_id), self.meta.kinds(image_id)
        if label.shape != gt.shape:
            gt, parts, kinds = (resize_nearest(a, label.shape) if a is not None else None for a in (gt, parts, kinds))
        self.meter.update(label, gt, parts, kinds)
        return True

    def sync(self) -> None:
        """Sum the counts over DDP ranks (a no-op without DDP)."""
        from wsss.pipeline.per_image import reduce_sum

        keys = sorted(self.meter.counts)
        values = reduce_sum([self.meter.counts[k] for k in keys] + [*self.meter.boundary.tolist(), self.meter.num_images])
        self.meter.counts = {k: int(v) for k, v in zip(keys, values)}
        self.meter.boundary = np.asarray(values[len(keys) : len(keys) + 4], np.int64)
        self.meter.num_images = int(values[-1])

    def result(self) -> dict[str, Any]:
        return self.meter.result()


class LabelScore:
    """mIoU of label maps vs GT on the evaluated ids, with 255 (unsure) scored two ways.

    ``miou``: 255 counted as background (the repo convention, IRN eval). ``miou_confident``: only
    pixels the label commits to. ``ignored_fraction``: share of 255 over all labelled pixels.
    Only evaluated ids with a GT mask are scored (``num_evaluated``); with none, the scores are
    ``None`` (``miou: null`` in metrics.json) and ``note`` says why.

    ``sharded``: the stage runs on every DDP rank (``all_ranks: true``), each scoring its shard
    (:func:`wsss.pipeline.per_image.shard`); :meth:`result` then sums the ranks' counts (a
    collective: every rank must call it). Stages that run on rank 0 alone leave it False.
    """

    def __init__(self, ctx: StageContext, sharded: bool = False) -> None:
        from wsss.pipeline.context import world_size

        proto = ctx.cfg.protocol
        self.split = proto.eval_split
        self.evaluated = set(eval_ids(ctx, proto.eval_split))
        self.gt_src = source(ctx, proto.eval_split, for_eval=True)
        n = ctx.cfg.data.num_classes + 1
        sync = sharded and world_size() > 1
        self.all, self.confident = SegmentationMetric(n, sync=sync), SegmentationMetric(n, sync=sync)
        self.ignored, self.total, self.num_evaluated, self.num_without_gt = 0, 0, 0, 0
        self.phenomena = PhenomenaScore.for_stage(ctx)
        self.counts_to_sum = sync  # the ranks' counts, summed once by result()

    def update(self, image_id: str, label: np.ndarray) -> None:
        label_t = torch.as_tensor(np.asarray(label)).long()
        self.ignored += int((label_t == IGNORE).sum())
        self.total += label_t.numel()
        if image_id not in self.evaluated:
            return
        if not self.gt_src.has_mask(image_id):
            self.num_without_gt += 1
            return
        gt_np = self.gt_src.load_mask(image_id)
        gt = torch.from_numpy(gt_np.astype(np.int64))
        self.all.update(label_t, gt)
        self.confident.update(label_t, torch.where(label_t == IGNORE, IGNORE, gt))
        self.phenomena.update(image_id, np.asarray(label), gt_np)
        self.num_evaluated += 1

    def result(self, with_confident: bool = True) -> dict[str, Any]:
        from wsss.pipeline.per_image import reduce_sum

        if self.counts_to_sum:  # once, however often the result is asked for
            counts = reduce_sum([self.ignored, self.total, self.num_evaluated, self.num_without_gt])
            self.ignored, self.total, self.num_evaluated, self.num_without_gt = (int(c) for c in counts)
            self.phenomena.sync()
            self.counts_to_sum = False
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
        out["phenomena"] = self.phenomena.result()
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
