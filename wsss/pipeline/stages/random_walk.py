"""Stage `random_walk`: AffinityNet semantic pseudo labels (PSA ``infer_aff.py``, docs/methods.md, "PSA / AffinityNet").

Per image: AffinityNet embedding at stride ``s``; seeds [(1 - max CAM)^alpha (16), CAMs] at full
resolution, zero-padded to the feature grid, ``s x s`` average-pooled; random walk with
``a_ij = exp(-mean|f_i - f_j|)`` within ``radius`` (5), ``beta`` (8), ``2^logt`` steps (256);
bilinear upsampling, crop, argmax -> label PNG (0..20, no 255, no CRF, as PSA). ``miou_seeds`` is
the argmax of the same seeds without the walk, for a like-for-like before/after comparison.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from wsss.functional.cam import background_power
from wsss.functional.random_walk import random_walk_from_features, upsample_scores
from wsss.io import load_npz, save_label_png
from wsss.parallel import progress
from wsss.pipeline.artifacts import cam_dir_of
from wsss.pipeline.context import StageContext
from wsss.pipeline.image_sets import cam_file, stage_images
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


@torch.no_grad()
def _run(ctx: StageContext) -> dict:
    p = ctx.params
    model = load_stage_model(ctx, "model")
    stride = model.stride
    cam_dir = cam_dir_of(ctx.read("cams"))
    dataset = stage_images(ctx, [p.split], include_holdout=False)
    # Under DDP (all_ranks) every rank walks its share of the images; the scores are summed.
    walked, seeded = LabelScore(ctx, sharded=True), LabelScore(ctx, sharded=True)
    for index in progress(shard(range(len(dataset))), desc="random_walk"):
        item = dataset[index]
        name, size = item["name"], item["size"]
        arrays = load_npz(cam_file(cam_dir, name))
        cams, lut = torch.from_numpy(arrays["cams"]), _lut(arrays["keys"])
        seeds = torch.cat([background_power(cams, float(p.bg_alpha))[None], cams])
        path = ctx.out_dir / "labels" / f"{name}.png"
        label = done_label(path)  # written by an interrupted attempt
        if label is None:
            features = model(item["image"][None].to(next(model.parameters()).device))[0].cpu()
            grid = tuple(features.shape[-2:])
            walk = random_walk_from_features(pool_to_grid(seeds, grid, stride), features,
                                             p.radius, p.beta, p.logt, p.get("sources", "all"))  # fmt: skip
            label = lut[upsample_scores(walk, size, stride).argmax(0)].numpy().astype(np.uint8)
            save_label_png(path, label)
        walked.update(name, label)
        seeded.update(name, lut[seeds.argmax(0)].numpy())
    out = {"split": p.split, "num_images": len(dataset), "label_dir": "labels", **walked.result(False),
           "miou_seeds": seeded.result(False)["miou"], "cam_miou": cam_baseline(ctx),
           "feature_stride": stride, "radius": p.radius, "beta": p.beta, "logt": p.logt,
           "bg_alpha": p.bg_alpha,
           "includes": f"random walk on AffinityNet features (beta {p.beta}, t 2^{p.logt}, radius "
                       f"{p.radius}) from [(1-max CAM)^{p.bg_alpha}, CAMs], no CRF; miou_seeds = "
                       "same seeds without the walk"}
    out.pop("ignored_fraction")
    return out
