"""Stage `calibrate_irn`: IRN's displacement mean-shift (``train_irn.py`` end, METHODS.md 3.4).

Runs the trained IRNet (eval mode, mean shift reset to 0) over ``split`` and stores the mean
displacement vector as ``mean_shift.npz`` (``mean`` (2,) float32, dy then dx); the label stages
load it into the network's ``mean_shift`` buffer, which is subtracted in eval mode. IRN averages
per-batch means of top-left 512 crops of train.txt; here each full image counts once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wsss.io import load_npz, save_npz
from wsss.pipeline.context import StageContext
from wsss.pipeline.image_sets import stage_images
from wsss.pipeline.stages.random_walk import load_stage_model
from wsss.pipeline.stages.train_refiner import torch_threads
from wsss.progress import tqdm  # plain lines instead of bar frames when not a TTY

SHIFT_FILE = "mean_shift.npz"


def mean_displacement(model: torch.nn.Module, images) -> torch.Tensor:
    """Mean raw displacement ``(2,)`` of ``model`` over an iterable of ``(1, 3, H, W)`` images."""
    model.eval()
    model.mean_shift.zero_()
    device = model.mean_shift.device
    means = []
    with torch.no_grad():
        for image in images:
            _, displacement = model(image.to(device))
            means.append(displacement.mean(dim=(0, 2, 3)).cpu())
    if not means:
        raise ValueError("calibrate_irn: no images to average over")
    return torch.stack(means).mean(dim=0)


def load_calibrated_irn(ctx: StageContext, stage: str) -> torch.nn.Module:
    """The IRNet of fit stage ``model_from``, with the mean shift from stage ``stage``."""
    model_from = ctx.cfg.stages[stage].model_from
    model = load_stage_model(ctx, model_from)
    shift = load_npz(Path(ctx.input(stage)) / SHIFT_FILE)
    if "mean" not in shift or shift["mean"].shape != (2,):
        raise KeyError(f"{ctx.input(stage) / SHIFT_FILE} must hold 'mean' of shape (2,)")
    model.mean_shift.copy_(torch.from_numpy(shift["mean"]))
    return model


def run(ctx: StageContext) -> dict:
    with torch_threads(ctx.params.get("num_threads")):
        return _run(ctx)


def _run(ctx: StageContext) -> dict:
    p = ctx.params
    model = load_stage_model(ctx, p.model_from)
    dataset = stage_images(ctx, [p.split], include_holdout=False)
    images = (dataset[i]["image"][None] for i in tqdm(range(len(dataset)), desc="calibrate_irn"))
    mean = mean_displacement(model, images).numpy().astype(np.float32)
    save_npz(ctx.out_dir / SHIFT_FILE, mean=mean)
    return {"split": p.split, "num_images": len(dataset), "mean_dy": float(mean[0]),
            "mean_dx": float(mean[1]), "shift_file": SHIFT_FILE,
            "includes": "mean raw displacement (stride-4 pixels) of the trained IRNet, full images"}
