"""Stage `random_walk`: AffinityNet semantic pseudo labels (PSA ``infer_aff.py``, docs/methods.md, "PSA / AffinityNet").

Per image: AffinityNet embedding at stride ``s``; seeds [(1 - max CAM)^alpha (16), CAMs] at full
resolution, zero-padded to the feature grid, ``s x s`` average-pooled; random walk with
``a_ij = exp(-mean|f_i - f_j|)`` within ``radius`` (5), ``beta`` (8), ``2^logt`` steps (256);
bilinear upsampling, crop, argmax -> label PNG (0..20, no 255, no CRF, as PSA). ``miou_seeds`` is
the argmax of the same seeds without the walk, for a like-for-like before/after comparison.

``bg_alpha: holdout`` (not in PSA): the value of ``bg_alphas`` whose walk has the best mIoU on the
protocol's held-out images (never reported), as eval_cam picks the CAM threshold. The right power
depends on how peaked the CAMs are (PSA's 16 suits ImageNet-initialised VGG/ResNet-38 CAMs; on the
synthetic tree the held-out images pick 2 for a from-scratch ResNet-18, 4 for EfficientNet-Lite0).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from wsss.functional.cam import background_power
from wsss.functional.random_walk import random_walk_from_features, upsample_scores
from wsss.io import load_npz, save_label_png
from wsss.metrics.segmentation import SegmentationMetric
from wsss.parallel import progress
from wsss.pipeline.artifacts import cam_dir_of
from wsss.pipeline.context import StageContext
from wsss.pipeline.image_sets import (
    cam_file,
    images_of,
    required_threshold_ids,
    source,
    stage_images,
)
from wsss.pipeline.models import load_stage_model, torch_threads
from wsss.pipeline.per_image import done_label, shard
from wsss.pipeline.scoring import LabelScore, cam_baseline


def pool_to_grid(scores: torch.Tensor, grid: tuple[int, int], stride: int) -> torch.Tensor:
    """Zero-pad ``(K, H, W)`` to ``grid * stride`` and average-pool ``stride x stride`` (PSA)."""
    height, width = scores.shape[-2:]
    padded = F.pad(scores, (0, max(0, grid[1] * stride - width), 0, max(0, grid[0] * stride - height)))
    padded = padded[:, : grid[0] * stride, : grid[1] * stride]
    return F.avg_pool2d(padded[None], stride)[0]


def _lut(keys: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([[0], keys.astype(np.int64) + 1]))


def run(ctx: StageContext) -> dict:
    with torch_threads(ctx.params.get("num_threads")):
        return _run(ctx)


def walk_seeds(cams: torch.Tensor, bg_alpha: float) -> torch.Tensor:
    """PSA's seeds ``(K+1, H, W)``: ``(1 - max CAM)^bg_alpha`` then the ``(K, H, W)`` CAMs."""
    return torch.cat([background_power(cams, bg_alpha)[None], cams])


def walk_label(model: torch.nn.Module, features: torch.Tensor, seeds: torch.Tensor, lut: torch.Tensor,
               size: tuple[int, int], p) -> np.ndarray:  # fmt: skip
    """The walk's label map (H, W) uint8 of one image from its AffinityNet ``features`` (D, h, w)
    and :func:`walk_seeds`."""
    grid = tuple(features.shape[-2:])
    walk = random_walk_from_features(pool_to_grid(seeds, grid, model.stride), features,
                                     p.radius, p.beta, p.logt, p.get("sources", "all"))  # fmt: skip
    return lut[upsample_scores(walk, size, model.stride).argmax(0)].numpy().astype(np.uint8)


def held_out_ids(ctx: StageContext) -> list[str]:
    """The held-out images that choose ``bg_alpha`` (empty for a number); fails before any
    training when ``holdout`` has nothing to choose on or the setting is neither."""
    p = ctx.params
    if isinstance(p.bg_alpha, str) and p.bg_alpha != "holdout":
        raise ValueError(f"stages.random_walk.bg_alpha must be a number > 0 or 'holdout', got {p.bg_alpha!r}")
    if p.bg_alpha != "holdout":
        return []
    if not list(p.get("bg_alphas") or []):
        raise ValueError("stages.random_walk.bg_alpha=holdout needs a non-empty stages.random_walk.bg_alphas")
    return required_threshold_ids(ctx, "random_walk: bg_alpha=holdout",
                                  "stages.random_walk.bg_alpha to a number (PSA: 16)")


def preflight(ctx: StageContext) -> None:
    """Before any stage trains: ``bg_alpha`` is a number or ``holdout`` with images to choose on."""
    held_out_ids(ctx)


def holdout_bg_alpha(ctx: StageContext, model: torch.nn.Module, cam_dir, held: list[str]) -> tuple[float, float]:
    """The value of ``bg_alphas`` whose walk labels have the best mIoU on the held-out images
    ``held`` (the protocol's threshold subset, never reported; ties: the first listed); (alpha, mIoU)."""
    proto, p = ctx.cfg.protocol, ctx.params
    alphas = [float(a) for a in p.bg_alphas]
    gt_src = source(ctx, proto.holdout_split, for_eval=True)
    scores = [SegmentationMetric(ctx.cfg.data.num_classes + 1) for _ in alphas]
    dataset = images_of(ctx, proto.holdout_split, held)
    device = next(model.parameters()).device
    for index in progress(range(len(dataset)), desc="random_walk[holdout]", leave=False):
        item = dataset[index]
        arrays = load_npz(cam_file(cam_dir, item["name"]))
        cams, lut = torch.from_numpy(arrays["cams"]), _lut(arrays["keys"])
        features = model(item["image"][None].to(device))[0].cpu()
        gt = torch.from_numpy(gt_src.load_mask(item["name"]).astype(np.int64))
        for alpha, score in zip(alphas, scores):
            label = walk_label(model, features, walk_seeds(cams, alpha), lut, item["size"], p)
            score.update(torch.from_numpy(label).long(), gt)
    mious = [float(score.compute()["miou"]) for score in scores]
    best = int(np.argmax(mious))
    return alphas[best], mious[best]


@torch.no_grad()
def _run(ctx: StageContext) -> dict:
    p = ctx.params
    model = load_stage_model(ctx, "model")
    stride = model.stride
    cam_dir = cam_dir_of(ctx.read("cams"))
    bg_alpha, chosen = p.bg_alpha, {}
    held = held_out_ids(ctx)
    if held:  # bg_alpha=holdout; every rank walks the few held-out images: all pick the same value
        bg_alpha, held_miou = holdout_bg_alpha(ctx, model, cam_dir, held)
        chosen = {"bg_alpha_source": f"holdout ({len(held)} images)", "holdout_miou": held_miou}
    bg_alpha = float(bg_alpha)
    dataset = stage_images(ctx, [p.split], include_holdout=False)
    # Under DDP (all_ranks) every rank walks its share of the images; the scores are summed.
    walked, seeded = LabelScore(ctx, sharded=True), LabelScore(ctx, sharded=True)
    for index in progress(shard(range(len(dataset))), desc="random_walk"):
        item = dataset[index]
        name, size = item["name"], item["size"]
        arrays = load_npz(cam_file(cam_dir, name))
        cams, lut = torch.from_numpy(arrays["cams"]), _lut(arrays["keys"])
        seeds = walk_seeds(cams, bg_alpha)
        path = ctx.out_dir / "labels" / f"{name}.png"
        label = done_label(path)  # written by an interrupted attempt
        if label is None:
            features = model(item["image"][None].to(next(model.parameters()).device))[0].cpu()
            label = walk_label(model, features, seeds, lut, size, p)
            save_label_png(path, label)
        walked.update(name, label)
        seeded.update(name, lut[seeds.argmax(0)].numpy())
    out = {"split": p.split, "num_images": len(dataset), "label_dir": "labels", **walked.result(False),
           "miou_seeds": seeded.result(False)["miou"], "cam_miou": cam_baseline(ctx),
           "feature_stride": stride, "radius": p.radius, "beta": p.beta, "logt": p.logt,
           "bg_alpha": bg_alpha, **chosen,
           "includes": f"random walk on AffinityNet features (beta {p.beta}, t 2^{p.logt}, radius "
                       f"{p.radius}) from [(1-max CAM)^{bg_alpha:g}, CAMs], no CRF; miou_seeds = "
                       "same seeds without the walk"}
    out.pop("ignored_fraction")
    return out
