"""Stage `make_affinity_labels`: PSA affinity labels from CAMs (docs/methods.md, "PSA / AffinityNet"), one PNG per image.

For each image of ``split`` the present-class CAMs get a background ``(1 - max)^alpha`` twice,
with the low (4) and high (32) alpha, and each score stack goes through the PSA soft dense CRF.
Confident foreground is the low-alpha argmax, confident background the high-alpha argmax, the
band between is 255 (:func:`wsss.functional.affinity.psa_affinity_label`). Labels are written at
full resolution (0 = bg, c + 1 = class c, 255 = ignore) so they crop with the image; AffinityNet
pools them to its feature grid at training time.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from omegaconf import OmegaConf

from wsss.data.labels import channels_to_label
from wsss.functional.affinity import psa_affinity_label
from wsss.functional.cam import background_power
from wsss.functional.crf import dense_crf
from wsss.io import save_label_png
from wsss.pipeline.artifacts import cam_dir_of
from wsss.pipeline.context import StageContext
from wsss.pipeline.image_sets import load_cams, load_rgb, source
from wsss.pipeline.per_image import done_label, run_per_image, shard
from wsss.pipeline.scoring import LabelScore, cam_baseline


def _affinity_label(image_id: str, cam_dir: Path, src, out_dir: Path, low: float, high: float,
                    crf: dict) -> dict:  # fmt: skip
    done = done_label(out_dir / f"{image_id}.png")  # written by an interrupted attempt
    if done is not None:
        return {"id": image_id, "label": done}
    cams, keys = load_cams(cam_dir, image_id)
    cams = torch.from_numpy(cams)
    image = load_rgb(src, image_id)
    stacks = [torch.cat([background_power(cams, a)[None], cams]).numpy() for a in (low, high)]
    la, ha = (torch.from_numpy(dense_crf(image, s, **crf)) for s in stacks)
    channel = psa_affinity_label(la, ha).numpy()
    label = channels_to_label(channel, keys)
    save_label_png(out_dir / f"{image_id}.png", label)
    return {"id": image_id, "label": label}


def run(ctx: StageContext) -> dict:
    p = ctx.params
    src = source(ctx, p.split)
    crf = OmegaConf.to_container(p.crf_params, resolve=True)
    work = functools.partial(_affinity_label, cam_dir=cam_dir_of(ctx.read("cams")), src=src,
                             out_dir=ctx.out_dir / "labels", low=float(p.low_alpha),
                             high=float(p.high_alpha), crf=crf)  # fmt: skip
    # Under DDP (all_ranks) every rank labels its share of the images; the scores are summed.
    score = LabelScore(ctx, sharded=True)
    for item in run_per_image(shard(src.ids), work, p.num_workers, "make_affinity_labels"):
        score.update(item["id"], item["label"])
    return {"split": p.split, "num_images": len(src.ids), "label_dir": "labels",
            "low_alpha": float(p.low_alpha), "high_alpha": float(p.high_alpha), **score.result(),
            "cam_miou": cam_baseline(ctx),
            "includes": f"PSA affinity labels: dCRF of [(1-max CAM)^{p.low_alpha}, CAMs] for fg and "
                        f"^{p.high_alpha} for bg, band between = 255; miou counts 255 as background"}
