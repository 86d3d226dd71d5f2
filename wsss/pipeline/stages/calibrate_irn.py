"""Stage `calibrate_irn`: IRN's displacement mean-shift (``train_irn.py`` end, docs/methods.md, "IRNet").

Runs the trained IRNet (eval mode, mean shift reset to 0) over ``split`` and stores the mean
displacement vector as ``mean_shift.npz`` (``mean`` (2,) float32, dy then dx); the label stages
load it into the network's ``mean_shift`` buffer, which is subtracted in eval mode. IRN averages
per-batch means of top-left 512 crops of train.txt; here each full image counts once.

An IRNet loaded from IRN's release (``train_irn.from_checkpoint``, format ``irn``) already holds
the mean shift IRN computed at the end of ``train_irn.py`` (``mean_shift.running_mean``), and
IRN's inference (``make_ins_seg_labels.py``) uses that stored value, never recomputing it; so
the stage keeps it (``source: checkpoint``) unless ``recompute_release=true``.
"""

from __future__ import annotations

import numpy as np
import torch

from wsss.io import save_npz
from wsss.methods.irnet import image_displacements, mean_displacement
from wsss.pipeline.context import StageContext, rank, read_metrics
from wsss.pipeline.image_sets import stage_images
from wsss.pipeline.models import SHIFT_FILE, load_stage_model, torch_threads
from wsss.pipeline.per_image import gather_in_order, shard
from wsss.progress import tqdm  # plain lines instead of bar frames when not a TTY

__all__ = ["SHIFT_FILE", "mean_displacement", "run"]


def run(ctx: StageContext) -> dict:
    with torch_threads(ctx.params.get("num_threads")):
        return _run(ctx)


def _run(ctx: StageContext) -> dict:
    p = ctx.params
    model = load_stage_model(ctx, "model")
    released = read_metrics(ctx.read("model")).get("checkpoint_format")
    if released and not p.get("recompute_release", False):
        mean = model.mean_shift.detach().cpu().numpy().astype(np.float32)
        if rank() == 0:
            save_npz(ctx.out_dir / SHIFT_FILE, mean=mean)
        return {"split": None, "num_images": 0, "mean_dy": float(mean[0]), "mean_dx": float(mean[1]),
                "shift_file": SHIFT_FILE, "source": "checkpoint", "checkpoint_format": released,
                "includes": f"the release's own mean shift ({released}: mean_shift.running_mean), "
                            "as IRN's inference uses it; not recomputed"}  # fmt: skip
    dataset = stage_images(ctx, [p.split], include_holdout=False)
    # Under DDP (all_ranks) every rank runs its share; the per-image means are gathered in the
    # dataset's order, so the average is the one a single process computes, to the bit.
    indices = shard(range(len(dataset)))
    images = (dataset[i]["image"][None] for i in tqdm(indices, desc="calibrate_irn"))
    rows = gather_in_order(list(image_displacements(model, images)), indices)
    if not rows:
        raise ValueError(f"calibrate_irn: no images to average over (split {p.split!r})")
    mean = torch.stack(rows).mean(dim=0).numpy().astype(np.float32)
    if rank() == 0:
        save_npz(ctx.out_dir / SHIFT_FILE, mean=mean)
    return {"split": p.split, "num_images": len(dataset), "mean_dy": float(mean[0]),
            "mean_dx": float(mean[1]), "shift_file": SHIFT_FILE, "source": "recomputed",
            "includes": "mean raw displacement (stride-4 pixels) of the trained IRNet, full images"}
