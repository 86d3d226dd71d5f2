"""Stage `eval_cam`: CAM mIoU vs ground truth over a sweep of background thresholds.

The reported ``miou`` uses the threshold chosen by ``protocol.threshold_mode``:
``holdout`` (best on the held-out val subset; default), ``fixed`` (``threshold``) or
``tune_on_eval`` (best on the evaluated split itself; flagged in the output).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm import tqdm

from wsss.functional.cam import cams_to_label
from wsss.io import load_npz
from wsss.metrics.cam_threshold import ThresholdSweep
from wsss.metrics.segmentation import class_names_iou, scores_from_confusion
from wsss.pipeline.context import StageContext, read_metrics
from wsss.pipeline.image_sets import cam_file, class_names, eval_ids, load_rgb, source, threshold_ids
from wsss.pipeline.protocol import check_threshold_mode
from wsss.pipeline.visualize import cam_panel, publish

log = logging.getLogger(__name__)


def sweep(ctx: StageContext, cam_dir, split: str, ids: list[str], thresholds) -> ThresholdSweep:
    src = source(ctx, split, for_eval=True)
    result = ThresholdSweep(thresholds, num_classes=ctx.cfg.data.num_classes + 1)
    for image_id in tqdm(ids, desc=f"eval_cam[{split}]", leave=False):
        arrays = load_npz(cam_file(cam_dir, image_id))
        gt = torch.from_numpy(src.load_mask(image_id).astype(np.int64))
        result.update(torch.from_numpy(arrays["cams"]), torch.from_numpy(arrays["keys"]), gt)
    return result


def run(ctx: StageContext) -> dict:
    p, proto = ctx.params, ctx.cfg.protocol
    mode = check_threshold_mode(proto.threshold_mode)
    make_cam = ctx.input("make_cam")
    cam_dir = make_cam / read_metrics(make_cam)["cam_dir"]
    thresholds = [float(t) for t in p.thresholds]

    evaluated = sweep(ctx, cam_dir, proto.eval_split, eval_ids(ctx, proto.eval_split), thresholds)
    curve = evaluated.compute()
    out: dict = {"eval_split": proto.eval_split, "threshold_mode": mode,
                 "sweep_eval": {f"{t:.2f}": float(curve[t]) for t in thresholds}}
    if mode == "holdout":
        held = sweep(ctx, cam_dir, proto.holdout_split, threshold_ids(ctx), thresholds)
        threshold, held_miou = held.best()
        out.update(threshold_source=f"holdout {proto.holdout_split} ({len(threshold_ids(ctx))} images)",
                   holdout_miou=float(held_miou))
    elif mode == "fixed":
        threshold = float(p.threshold)
        out.update(threshold_source="fixed (config)")
        if threshold not in curve:
            thresholds.append(threshold)
            evaluated = sweep(ctx, cam_dir, proto.eval_split, eval_ids(ctx, proto.eval_split), thresholds)
    else:
        threshold, _ = evaluated.best()
        out.update(threshold_source=f"TUNED ON THE EVALUATED SPLIT ({proto.eval_split}) - optimistic")
        log.warning("eval_cam: background threshold tuned on the split it is reported on")
    chosen = scores_from_confusion(evaluated.confusions()[threshold])
    oracle_t, oracle_miou = evaluated.best()
    out.update(
        threshold=float(threshold), miou=float(chosen["miou"]),
        per_class_iou=class_names_iou(chosen["iou"], class_names(ctx)),
        oracle_threshold_on_eval=float(oracle_t), oracle_miou_on_eval=float(oracle_miou),
        includes=read_metrics(make_cam).get("includes", ""),
    )
    _examples(ctx, cam_dir, eval_ids(ctx, proto.eval_split)[: p.num_examples], out["threshold"])
    return out


def _examples(ctx: StageContext, cam_dir, ids: list[str], threshold: float) -> None:
    """image | CAM overlay | CAM label at the chosen threshold | GT, for a few images."""
    src = source(ctx, ctx.cfg.protocol.eval_split, for_eval=True)
    panels = []
    for image_id in ids:
        arrays = load_npz(cam_file(cam_dir, image_id))
        cams = torch.from_numpy(arrays["cams"])
        label = cams_to_label(cams, torch.from_numpy(arrays["keys"]), threshold).numpy().astype(np.uint8)
        panels.append((image_id, cam_panel(load_rgb(src, image_id), arrays["cams"], label,
                                           src.load_mask(image_id))))
    publish(panels, ctx.out_dir / "examples", "eval_cam/examples", ctx.loggers)
