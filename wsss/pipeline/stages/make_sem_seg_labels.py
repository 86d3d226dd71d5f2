"""Stage `make_sem_seg_labels`: IRN semantic pseudo labels (``make_sem_seg_labels.py``, docs/methods.md, "IRNet").

Per image: IRNet boundary ``B`` = sigmoid of the mean of the image's and the flipped-back flip's
logits (stride 4); stride-4 CAMs (IRN's separately stored ``cam``: make_cam's ``strided`` with
``stages.make_cam.upsample=irn``, else the full-resolution CAMs area-resized to the boundary grid
and re-max-normalised); random walk of
``cams x (1 - B)`` with ``a_ij = 1 - max_path B`` (radius 5, beta 10, 2^8 steps); x4 bilinear
upsampling, global-max normalisation, constant background 0.25, argmax -> PNG (0..20, no 255).
``miou_seeds`` is the full-resolution (floored) CAMs with the same 0.25 background and no walk.

``seed_floor`` (not in IRN; synthetic default ``eval_cam``): CAMs become ``relu(cam - floor) /
(1 - floor)`` before the walk. IRN has no background channel in the walk and normalises by the
global max afterwards, which assumes near-zero CAMs on background; the from-scratch synthetic
classifier's CAMs sit at ~0.4 there, and the walk's averaging then labels everything foreground.
"""

from __future__ import annotations

import numpy as np
import torch

from wsss.functional.cam import cams_to_label
from wsss.functional.random_walk import irn_scores_to_label, irn_semantic_scores, upsample_scores
from wsss.io import save_label_png
from wsss.metrics.cam_threshold import ThresholdSweep
from wsss.parallel import progress
from wsss.pipeline.artifacts import cam_dir_of
from wsss.pipeline.context import StageContext
from wsss.pipeline.image_sets import (
    images_of,
    load_cams,
    load_strided_cams,
    required_threshold_ids,
    source,
    stage_images,
    threshold_ids,
)
from wsss.pipeline.irn_seeds import STRIDE, floored, seed_floor, walk_seeds
from wsss.pipeline.models import load_calibrated_irn, torch_threads
from wsss.pipeline.per_image import done_label, shard
from wsss.pipeline.scoring import LabelScore, cam_baseline


def run(ctx: StageContext) -> dict:
    with torch_threads(ctx.params.get("num_threads")):
        return _run(ctx)


def walk_scores(model: torch.nn.Module, item: dict, cams: torch.Tensor, floor: float | None,
                p, strided: np.ndarray | None = None) -> torch.Tensor:  # fmt: skip
    """Upsampled IRN walk scores ``(K, H, W)`` of one image (divide by the global max and prepend
    a constant background to get the label). ``strided``: make_cam's stride-4 CAMs, if stored."""
    boundary, _ = model.edge_displacement(item["image"])
    seeds = walk_seeds(cams, None if strided is None else torch.from_numpy(strided), floor, tuple(boundary.shape))
    scores = irn_semantic_scores(seeds, boundary,
                                 p.radius, p.beta, p.exp_times, p.get("sources", "all"))  # fmt: skip
    return upsample_scores(scores, item["size"], STRIDE)


def held_out_ids(ctx: StageContext) -> list[str]:
    """The held-out images that choose ``bg_threshold`` (empty for a number); fails when
    ``holdout`` has nothing to choose on."""
    if ctx.params.bg_threshold != "holdout":
        return []
    return required_threshold_ids(ctx, "make_sem_seg_labels: bg_threshold=holdout",
                                  "stages.make_sem_seg_labels.bg_threshold to a number (IRN: 0.25)")


def preflight(ctx: StageContext) -> None:
    """Before any stage trains: ``bg_threshold=holdout`` has held-out masks to choose on."""
    held_out_ids(ctx)


def holdout_bg_threshold(ctx: StageContext, model: torch.nn.Module, cam_dir, floor: float | None,
                         thresholds) -> tuple[float, float]:  # fmt: skip
    """The walk's background threshold with the best mIoU on the held-out images (the protocol's
    threshold subset, never reported), as eval_cam picks the CAM threshold; (threshold, mIoU)."""
    proto = ctx.cfg.protocol
    gt_src = source(ctx, proto.holdout_split, for_eval=True)
    held = held_out_ids(ctx)
    sweep = ThresholdSweep(list(thresholds), num_classes=ctx.cfg.data.num_classes + 1)
    dataset = images_of(ctx, proto.holdout_split, held)
    for index in progress(range(len(dataset)), desc="make_sem_seg_labels[holdout]", leave=False):
        item = dataset[index]
        cams, keys = (torch.from_numpy(a) for a in load_cams(cam_dir, item["name"]))
        scores = walk_scores(model, item, cams, floor, ctx.params, load_strided_cams(cam_dir, item["name"]))
        scores = scores / scores.amax().clamp_min(1e-12) if scores.numel() else scores
        gt = torch.from_numpy(gt_src.load_mask(item["name"]).astype(np.int64))
        sweep.update(scores, keys, gt)
    return sweep.best()


def _run(ctx: StageContext) -> dict:
    p = ctx.params
    model = load_calibrated_irn(ctx)
    cam_dir = cam_dir_of(ctx.read("cams"))
    floor = seed_floor(ctx, p.get("seed_floor"))
    bg, chosen = p.bg_threshold, {}
    if bg == "holdout":
        bg, held_miou = holdout_bg_threshold(ctx, model, cam_dir, floor, p.bg_thresholds)
        chosen = {
            "bg_threshold_source": f"holdout ({len(threshold_ids(ctx))} images)",
            "holdout_miou": held_miou,
        }
    bg = float(bg)
    dataset = stage_images(ctx, [p.split], include_holdout=False)
    # Under DDP (all_ranks) every rank walks its share of the images (the few held-out images of
    # the threshold choice above: all of them, on every rank, so every rank picks the same value).
    walked, seeded = LabelScore(ctx, sharded=True), LabelScore(ctx, sharded=True)
    for index in progress(shard(range(len(dataset))), desc="make_sem_seg_labels"):
        item = dataset[index]
        name = item["name"]
        cams, keys = (torch.from_numpy(a) for a in load_cams(cam_dir, name))
        path = ctx.out_dir / "labels" / f"{name}.png"
        label = done_label(path)  # written by an interrupted attempt
        if label is None:
            strided = load_strided_cams(cam_dir, name)
            label = irn_scores_to_label(walk_scores(model, item, cams, floor, p, strided), keys, bg)
            label = label.numpy().astype(np.uint8)
            save_label_png(path, label)
        walked.update(name, label)
        seeded.update(name, cams_to_label(floored(cams, floor), keys, bg).numpy())
    out = {
        "split": p.split,
        "num_images": len(dataset),
        "label_dir": "labels",
        **walked.result(False),
        "miou_seeds": seeded.result(False)["miou"],
        "cam_miou": cam_baseline(ctx),
        "radius": p.radius,
        "beta": p.beta,
        "exp_times": p.exp_times,
        "bg_threshold": bg,
        **chosen,
        "seed_floor": floor,
        "includes": f"IRN random walk on boundary affinities (radius {p.radius}, beta {p.beta}, "
        f"t 2^{p.exp_times}, seeds x (1-B)), bg {bg:.2f} after global-max "
        f"norm, no CRF; miou_seeds = the same seeds with bg {bg:.2f}, no walk"
        + (f"; seeds = relu(CAM - {floor:.2f}) rescaled (not IRN)" if floor is not None else ""),
    }
    out.pop("ignored_fraction")
    return out
