"""Stage `make_cam`: multi-scale + flip CAMs of the trained classifier, one .npz per image.

The network is the fit stage read as ``model`` (``train_cls``: ``cfg.method``; any other fit
stage: its ``module`` node, e.g. OAA+'s ``train_iam``). Covers the pseudo-label split, the evaluated split and the held-out threshold subset, each
image once. CAMs are ReLU'd, restricted to the image's classes and max-normalised per class.
"""

from __future__ import annotations

from torch.utils.data import DataLoader

from wsss.data.datasets import collate_single
from wsss.pipeline.cam_inference import CAMInference, CAMWriter
from wsss.pipeline.context import StageContext
from wsss.pipeline.image_sets import stage_images
from wsss.pipeline.models import load_stage_model


def run(ctx: StageContext) -> dict:
    p = ctx.params
    classifier = load_stage_model(ctx, "model", to_device=False)  # the Trainer places it
    dataset = stage_images(ctx, list(p.splits), include_holdout=True)
    loader = DataLoader(dataset, batch_size=1, num_workers=ctx.cfg.data.module.num_workers,
                        collate_fn=collate_single)
    cam_dir = ctx.out_dir / "cams"
    trainer = ctx.trainer(callbacks=[CAMWriter(cam_dir)], logger=False)
    trainer.predict(CAMInference(classifier, p.scales, p.flip), loader, return_predictions=False)
    model = ctx.read_stage("model")
    includes = (f"CAMs of the {model} model at scales {list(p.scales)}"
                + (" + flip" if p.flip else " (no flip)") + ", no CRF")
    return {"num_images": len(dataset), "scales": list(p.scales), "flip": bool(p.flip),
            "splits": list(p.splits), "cam_dir": "cams", "model": model, "includes": includes}
