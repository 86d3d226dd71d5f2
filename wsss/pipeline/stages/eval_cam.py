"""Stage `eval_cam`: CAM mIoU vs ground truth over a sweep of background thresholds.

The reported ``miou`` uses the threshold chosen by ``protocol.threshold_mode``:
``holdout`` (best on the held-out val subset; default), ``fixed`` (``threshold``),
``tune_on_eval`` (best on the evaluated split itself; flagged in the output) or ``auto``
(``holdout`` when the held-out images have GT masks, else ``fixed``; the data=folder default).

Only images with a GT mask are scored (``num_evaluated``). Without any on the evaluated split
the stage still records the threshold and draws the CAM panels, and reports ``miou: null``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from wsss.functional.cam import cams_to_label
from wsss.io import load_npz
from wsss.metrics.cam_threshold import ThresholdSweep
from wsss.metrics.segmentation import class_names_iou, scores_from_confusion
from wsss.parallel import progress
from wsss.pipeline.artifacts import cam_dir_of
from wsss.pipeline.context import StageContext, rank, read_metrics
from wsss.pipeline.image_sets import (
    cam_file,
    class_names,
    eval_ids,
    load_rgb,
    no_gt_note,
    source,
    threshold_ids,
    with_gt,
)
from wsss.pipeline.per_image import shard
from wsss.pipeline.protocol import MissingGroundTruthError, check_threshold_mode
from wsss.pipeline.scoring import PhenomenaScore
from wsss.pipeline.visualize import cam_panel, publish

log = logging.getLogger(__name__)


def sweep(ctx: StageContext, cam_dir, split: str, ids: list[str], thresholds) -> ThresholdSweep:
    """Threshold sweep over ``ids`` (every one must have a GT mask: see :func:`with_gt`). Under
    DDP (all_ranks) each rank sweeps its share and the histograms are summed into every rank,
    so all ranks pick the same threshold."""
    src = source(ctx, split, for_eval=True)
    result = ThresholdSweep(thresholds, num_classes=ctx.cfg.data.num_classes + 1)
    for image_id in progress(shard(ids), desc=f"eval_cam[{split}]", leave=False):
        arrays = load_npz(cam_file(cam_dir, image_id))
        gt = torch.from_numpy(src.load_mask(image_id).astype(np.int64))
        result.update(torch.from_numpy(arrays["cams"]), torch.from_numpy(arrays["keys"]), gt)
    result.sync()
    return result


def threshold_plan(ctx: StageContext) -> tuple[str, list[str], list[str]]:
    """(effective threshold mode, held-out ids, held-out ids with a GT mask).

    ``auto`` becomes ``holdout`` when some held-out image has a GT mask, else ``fixed``.
    ``holdout`` without any held-out mask and ``tune_on_eval`` without any mask on the evaluated
    ids raise :class:`MissingGroundTruthError` (:func:`preflight`: before any stage runs).
    """
    p, proto = ctx.params, ctx.cfg.protocol
    mode = check_threshold_mode(proto.threshold_mode)
    held: list[str] = []
    held_gt: list[str] = []
    if mode in ("holdout", "auto"):
        held = threshold_ids(ctx)
        src = source(ctx, proto.holdout_split, for_eval=True, check_images=False)
        held_gt = with_gt(src, held)
        if held_gt:
            return "holdout", held, held_gt
        if mode == "auto":
            return "fixed", held, held_gt
        shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        raise MissingGroundTruthError(
            f"protocol.threshold_mode=holdout picks the CAM background threshold on held-out images "
            f"with GT masks, but none of the {len(held)} held-out images of split "
            f"{proto.holdout_split!r} ({shown}) has a GT mask (data.eval_mask_dir="
            f"{ctx.cfg.data.get('eval_mask_dir')}; data=folder reads <root>/masks/<id>.png). Without "
            f"masks, set protocol.threshold_mode=fixed and stages.eval_cam.threshold=T (now "
            f"{p.threshold}: CAM scores above T become foreground), or protocol.threshold_mode=auto "
            f"(holdout when the held-out images have masks, fixed otherwise; the data=folder default)."
        )
    if mode == "tune_on_eval":
        src = source(ctx, proto.eval_split, for_eval=True, check_images=False)
        if not with_gt(src, eval_ids(ctx, proto.eval_split)):
            raise MissingGroundTruthError(
                f"protocol.threshold_mode=tune_on_eval tunes the CAM background threshold on the "
                f"evaluated split {proto.eval_split!r}, but none of its images has a GT mask; set "
                f"protocol.threshold_mode=fixed and stages.eval_cam.threshold=T (now {p.threshold})."
            )
    return mode, held, held_gt


def preflight(ctx: StageContext) -> None:
    """Before any stage runs: fail when the threshold mode needs GT masks the data lacks."""
    threshold_plan(ctx)


def run(ctx: StageContext) -> dict:
    p, proto = ctx.params, ctx.cfg.protocol
    configured = check_threshold_mode(proto.threshold_mode)
    mode, held, held_gt = threshold_plan(ctx)
    make_cam = ctx.read("cams")
    cam_dir = cam_dir_of(make_cam)
    thresholds = [float(t) for t in p.thresholds]

    reported = eval_ids(ctx, proto.eval_split)
    scored = with_gt(source(ctx, proto.eval_split, for_eval=True), reported)
    if scored and len(scored) < len(reported):
        log.warning("eval_cam: %d of %d evaluated images have no GT mask; scoring the other %d",
                    len(reported) - len(scored), len(reported), len(scored))
    evaluated = sweep(ctx, cam_dir, proto.eval_split, scored, thresholds) if scored else None
    curve = evaluated.compute() if evaluated is not None else {}
    out: dict = {"eval_split": proto.eval_split, "threshold_mode": mode,
                 "sweep_eval": {f"{t:.2f}": float(curve[t]) for t in thresholds} if scored else None}
    if configured != mode:
        out["threshold_mode_config"] = configured
    if mode == "holdout":
        held_sweep = sweep(ctx, cam_dir, proto.holdout_split, held_gt, thresholds)
        threshold, held_miou = held_sweep.best()
        counted = f"{len(held)} images"
        if len(held_gt) < len(held):  # only those with a GT mask are used
            counted = f"{len(held_gt)} of {len(held)} images have GT"
        out.update(threshold_source=f"holdout {proto.holdout_split} ({counted})",
                   holdout_miou=float(held_miou))
    elif mode == "fixed":
        threshold = float(p.threshold)
        out.update(threshold_source="fixed (config)" if configured == "fixed" else
                   f"fixed (config: stages.eval_cam.threshold; protocol.threshold_mode={configured} and "
                   f"none of the {len(held)} held-out {proto.holdout_split} images has a GT mask)")
        if evaluated is not None and threshold not in curve:
            thresholds.append(threshold)
            evaluated = sweep(ctx, cam_dir, proto.eval_split, scored, thresholds)
        if configured != "fixed":
            log.warning("eval_cam: no GT masks on the held-out images; using the fixed background "
                        "threshold %.2f (stages.eval_cam.threshold)", threshold)
    else:
        threshold, _ = evaluated.best()  # threshold_plan made sure some evaluated image has GT
        out.update(threshold_source=f"TUNED ON THE EVALUATED SPLIT ({proto.eval_split}) - optimistic")
        log.warning("eval_cam: background threshold tuned on the split it is reported on")
    includes = read_metrics(make_cam).get("includes", "")
    if evaluated is not None:
        chosen = scores_from_confusion(evaluated.confusions()[threshold])
        oracle_t, oracle_miou = evaluated.best()
        out.update(
            threshold=float(threshold), miou=float(chosen["miou"]),
            per_class_iou=class_names_iou(chosen["iou"], class_names(ctx)),
            oracle_threshold_on_eval=float(oracle_t), oracle_miou_on_eval=float(oracle_miou),
        )
    else:
        out.update(threshold=float(threshold), miou=None, per_class_iou={},
                   oracle_threshold_on_eval=None, oracle_miou_on_eval=None,
                   note=no_gt_note(proto.eval_split, len(reported)))
        includes += "; no GT masks: nothing scored"
        log.warning("eval_cam: %s", out["note"])
    out.update(num_evaluated=len(scored), includes=includes)
    if scored:  # the CAM labels at the chosen threshold: partial activation, context, boundaries
        out["phenomena"] = cam_phenomena(ctx, cam_dir, scored, out["threshold"])
    if rank() == 0:
        _examples(ctx, cam_dir, reported[: p.num_examples], out["threshold"])
    return out


def cam_phenomena(ctx: StageContext, cam_dir, ids: list[str], threshold: float) -> dict:
    """Phenomenon measures (:mod:`wsss.metrics.phenomena`) of the CAMs binarised at ``threshold``."""
    score = PhenomenaScore.for_stage(ctx)
    for image_id in shard(ids):  # under DDP: this rank's share, counts summed below
        arrays = load_npz(cam_file(cam_dir, image_id))
        label = cams_to_label(torch.from_numpy(arrays["cams"]), torch.from_numpy(arrays["keys"]), threshold)
        score.update(image_id, label.numpy())
    score.sync()
    return score.result()


def _examples(ctx: StageContext, cam_dir, ids: list[str], threshold: float) -> None:
    """image | CAM overlay | CAM label at the chosen threshold | GT (when the image has one)."""
    src = source(ctx, ctx.cfg.protocol.eval_split, for_eval=True)
    panels = []
    for image_id in ids:
        arrays = load_npz(cam_file(cam_dir, image_id))
        cams = torch.from_numpy(arrays["cams"])
        label = cams_to_label(cams, torch.from_numpy(arrays["keys"]), threshold).numpy().astype(np.uint8)
        masks = [label] + ([src.load_mask(image_id)] if src.has_mask(image_id) else [])
        panels.append((image_id, cam_panel(load_rgb(src, image_id), arrays["cams"], *masks)))
    publish(panels, ctx.out_dir / "examples", "eval_cam/examples", ctx.loggers)
