"""Stage `make_ir_labels`: IRN inter-pixel relation labels from CAMs (docs/methods.md, "IRNet").

Per image: argmax of [fg_threshold (0.30), CAMs] and of [bg_threshold (0.05), CAMs], each
refined by IRN's label dense CRF (unary from labels, gt_prob 0.7, bilateral 50/5/10). Foreground
comes from the 0.30 map, background where *both* maps say background, the rest is 255
(:func:`wsss.functional.affinity.irn_label_from_cams`). Full-resolution PNGs (0 = bg,
c + 1 = class c, 255 = unreliable); IRNet downscales them x0.25 (nearest) at training time.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from wsss.data.labels import channels_to_label
from wsss.functional.affinity import irn_label_from_cams
from wsss.functional.crf import dense_crf_labels
from wsss.io import save_label_png
from wsss.pipeline.artifacts import cam_dir_of
from wsss.pipeline.context import StageContext
from wsss.pipeline.image_sets import load_cams, load_rgb, source
from wsss.pipeline.per_image import done_label, run_per_image, shard
from wsss.pipeline.scoring import LabelScore, cam_baseline


def _conf_label(cams: np.ndarray, threshold: float, image: np.ndarray, crf: dict) -> np.ndarray:
    """Compact channel label (0 = bg, k = k-th present class) of [threshold, CAMs], CRF'd."""
    scores = np.concatenate([np.full((1, *cams.shape[1:]), threshold, np.float32), cams])
    return dense_crf_labels(image, scores.argmax(axis=0), len(scores), **crf)


def _ir_label(image_id: str, cam_dir: Path, src, out_dir: Path, fg: float, bg: float, crf: dict) -> dict:
    done = done_label(out_dir / f"{image_id}.png")  # written by an interrupted attempt
    if done is not None:
        return {"id": image_id, "label": done}
    cams, keys = load_cams(cam_dir, image_id)
    image = load_rgb(src, image_id)
    channel = irn_label_from_cams(torch.from_numpy(_conf_label(cams, fg, image, crf)),
                                  torch.from_numpy(_conf_label(cams, bg, image, crf))).numpy()
    label = channels_to_label(channel, keys)
    save_label_png(out_dir / f"{image_id}.png", label)
    return {"id": image_id, "label": label}


def run(ctx: StageContext) -> dict:
    p = ctx.params
    src = source(ctx, p.split)
    crf = OmegaConf.to_container(p.crf_params, resolve=True)
    work = functools.partial(_ir_label, cam_dir=cam_dir_of(ctx.read("cams")), src=src, out_dir=ctx.out_dir / "labels",
                             fg=float(p.fg_threshold), bg=float(p.bg_threshold), crf=crf)
    # Under DDP (all_ranks) every rank labels its share of the images; the scores are summed.
    score = LabelScore(ctx, sharded=True)
    for item in run_per_image(shard(src.ids), work, p.num_workers, "make_ir_labels"):
        score.update(item["id"], item["label"])
    return {"split": p.split, "num_images": len(src.ids), "label_dir": "labels",
            "fg_threshold": float(p.fg_threshold), "bg_threshold": float(p.bg_threshold),
            **score.result(), "cam_miou": cam_baseline(ctx),
            "includes": f"IRN relation labels: label-dCRF of CAM argmax at fg {p.fg_threshold} / bg "
                        f"{p.bg_threshold}, band between = 255; miou counts 255 as background"}
