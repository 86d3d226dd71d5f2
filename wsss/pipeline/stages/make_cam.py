"""Stage `make_cam`: multi-scale + flip CAMs of the trained classifier, one .npz per image.

Covers the pseudo-label split, the evaluated split and the held-out threshold subset, each
image once. CAMs are ReLU'd, restricted to the image's classes and max-normalised per class.
"""

from __future__ import annotations

from hydra.utils import instantiate
from torch.utils.data import DataLoader

from wsss.data.datasets import collate_single
from wsss.pipeline.cam_inference import CAMInference, CAMWriter
from wsss.pipeline.context import MODEL_FILE, StageContext, load_model
from wsss.pipeline.image_sets import stage_images


def run(ctx: StageContext) -> dict:
    p = ctx.params
    classifier = load_model(instantiate(ctx.cfg.method), ctx.input("train_cls") / MODEL_FILE)
    dataset = stage_images(ctx, list(p.splits), include_holdout=True)
    loader = DataLoader(dataset, batch_size=1, num_workers=ctx.cfg.data.module.num_workers,
                        collate_fn=collate_single)
    cam_dir = ctx.out_dir / "cams"
    trainer = ctx.trainer(callbacks=[CAMWriter(cam_dir)], logger=False)
    trainer.predict(CAMInference(classifier, p.scales, p.flip), loader, return_predictions=False)
    includes = f"CAMs at scales {list(p.scales)}" + (" + flip" if p.flip else " (no flip)") + ", no CRF"
    return {"num_images": len(dataset), "scales": list(p.scales), "flip": bool(p.flip),
            "splits": list(p.splits), "cam_dir": "cams", "includes": includes}
